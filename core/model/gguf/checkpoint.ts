/**
 * A GGUF file (or `ollama:NAME[:TAG]`) opened as a tome Checkpoint: config from
 * the metadata, tensors under their Hugging Face names and shapes, read lazily,
 * dequantized to float32 and, for the `llama` architecture, with q/k rows
 * un-permuted back to the rotate-half layout — or, for Q8_0/Q4_0 matrices at
 * q8/q4, as the file's own blocks (`readBlocks`, `blocks.ts`).
 */
import { basename } from "node:path";
import { TomeError } from "../../errors.ts";
import type { Checkpoint } from "../checkpoint.ts";
import { expectedTensors } from "../checkpoint.ts";
import type { TensorInfo } from "../safetensors.ts";
import { configFromGguf } from "./config.ts";
import { type GgufHeader, meta } from "./format.ts";
import { hfName, permuteHeads, permuteRows } from "./names.ts";
import { OLLAMA_PREFIX, resolveOllama } from "./ollama.ts";
import { readGgufHeader, readTensorBytes, readTensorF32 } from "./reader.ts";
import { fileBlocks } from "./blocks.ts";
import { takesUnchanged } from "../../../kernels/gguf_blocks.ts";

/** True when a `--model` value names a GGUF file or an Ollama model rather than a checkpoint directory. */
export function isGgufModel(spec: string): boolean {
  return spec.toLowerCase().endsWith(".gguf") || spec.startsWith(OLLAMA_PREFIX);
}

/** The GGUF file a model spec names (an Ollama reference resolved to its blob). */
export function resolveGguf(spec: string): Promise<string> {
  return spec.startsWith(OLLAMA_PREFIX) ? resolveOllama(spec) : Promise.resolve(spec);
}

let last: { path: string; size: number; mtime: number; header: GgufHeader } | null = null;

/** Reads (or reuses, when the file is unchanged) the header of the GGUF a spec names. */
export async function ggufHeaderFor(spec: string): Promise<GgufHeader> {
  const path = await resolveGguf(spec);
  if (last?.path === path) {
    const st = await Deno.stat(path).catch(() => null);
    if (st && st.size === last.size && (st.mtime?.getTime() ?? 0) === last.mtime) return last.header;
  }
  const header = await readGgufHeader(path);
  last = { path, size: header.fileSize, mtime: header.mtime, header };
  return header;
}

/** Opens a GGUF model as a Checkpoint (reads the header and `rope_freqs` only). */
export async function openGgufCheckpoint(spec: string): Promise<Checkpoint> {
  const h = await ggufHeaderFor(spec);
  const freqsInfo = h.tensors.find((t) => t.name === "rope_freqs.weight");
  const config = configFromGguf(h, freqsInfo ? await readTensorF32(h, freqsInfo) : null);
  const arch = String(meta(h, "general.architecture"));
  const tensors = new Map<string, TensorInfo>();
  const ggufOf = new Map<string, typeof h.tensors[number]>();
  for (const t of h.tensors) {
    const name = hfName(t.name);
    if (!name) continue;
    const shape = [...t.dims].reverse();
    // tensors reach the graph as float32, whatever their type in the file
    tensors.set(name, { name, dtype: "F32", shape, begin: t.offset, end: t.offset + t.bytes, file: h.path });
    ggufOf.set(name, t);
  }
  const tied = config.tieEmbeddings;
  for (const [name, shape] of expectedTensors(config, tied)) {
    const t = tensors.get(name);
    if (!t) {
      throw new TomeError("modelInvalid", `${h.path}: missing tensor for ${name} (${arch}, ${config.layers} layers)`);
    }
    if (t.shape.join() !== shape.join()) {
      throw new TomeError(
        "modelInvalid",
        `${h.path}: tensor ${ggufOf.get(name)!.name} has shape [${t.shape}], the metadata implies [${shape}]`,
      );
    }
  }
  const readTensor = async (name: string): Promise<Float32Array> => {
    const t = ggufOf.get(name);
    if (!t) throw new TomeError("modelInvalid", `${h.path}: missing tensor ${name}`);
    const data = await readTensorF32(h, t);
    const heads = permuteHeads(arch, name, config.heads, config.kvHeads);
    return heads ? permuteRows(data, heads, t.dims.length > 1 ? t.dims[0] : 1, false) : data;
  };
  // Q8_0/Q4_0 matrices as the file's own blocks, never widened to float32
  const readBlocks = async (name: string, bits: 4 | 8) => {
    const t = ggufOf.get(name);
    if (!t || t.dims.length !== 2 || !takesUnchanged(t.type, bits)) return null;
    const [cols, rows] = t.dims;
    return fileBlocks(arch, config, name, t.type, await readTensorBytes(h, t), rows, cols, bits);
  };
  return {
    dir: h.path,
    config,
    tensors,
    files: [{ name: basename(h.path), size: h.fileSize, mtime: h.mtime }],
    tiedEmbeddings: tied,
    readTensor,
    readBlocks,
    ggmlTypes: new Map([...ggufOf].map(([name, t]) => [name, t.type])),
    identity: JSON.stringify({ gguf: h.path, size: h.fileSize, mtime: h.mtime, config }),
  };
}
