/**
 * A Hugging Face checkpoint directory → one GGUF file that llama.cpp loads:
 * config and tokenizer as `{arch}.*` / `tokenizer.ggml.*` metadata, tensors
 * under llama.cpp's names, q/k rows permuted to interleaved RoPE for the
 * `llama` architecture, norms and biases in F32, matrices in the chosen type.
 */
import { basename, join, resolve } from "node:path";
import { quantizeQ4_0, quantizeQ8_0 } from "../../../kernels/quant_gguf.ts";
import { f32ToF16 } from "../../../kernels/fp16.ts";
import { fsError, TomeError } from "../../errors.ts";
import { expectedTensors, loadTensor, openCheckpoint } from "../checkpoint.ts";
import { configMetadata, ropeFreqsTensor } from "./config.ts";
import { ggufArch, ggufName, permuteHeads, permuteRows } from "./names.ts";
import { tokenizerMetadata } from "./tokenizer.ts";
import { type GgufTensorToWrite, kv, writeGguf } from "./writer.ts";

/** Weight types `tome convert` writes. */
export const WRITE_TYPES = ["f32", "f16", "q8_0", "q4_0"] as const;
export type WriteType = typeof WRITE_TYPES[number];

const FILE_TYPE: Record<WriteType, number> = { f32: 0, f16: 1, q4_0: 2, q8_0: 7 };
const MATRIX_TYPE: Record<WriteType, string> = { f32: "F32", f16: "F16", q8_0: "Q8_0", q4_0: "Q4_0" };

/** What a conversion wrote. */
export interface ConvertResult {
  out: string;
  tensors: number;
  bytes: number;
  /** Tensor count per GGML type. */
  types: Record<string, number>;
}

/** Encodes float32 values as a GGML type's bytes. */
export function encodeTensor(type: string, w: Float32Array): Uint8Array {
  if (type === "F32") return new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
  if (type === "F16") return new Uint8Array(f32ToF16(w).buffer);
  if (type === "Q8_0") return quantizeQ8_0(w);
  if (type === "Q4_0") return quantizeQ4_0(w);
  throw new Error(`tome does not write ${type}`);
}

/** Converts the checkpoint directory `dir` to a GGUF file `out` with matrices in `type`. */
export async function convertToGguf(dir: string, out: string, type: WriteType): Promise<ConvertResult> {
  const ckpt = await openCheckpoint(dir);
  const c = ckpt.config;
  const readJson = async (name: string, required: boolean): Promise<Record<string, unknown>> => {
    const path = join(dir, name);
    try {
      return JSON.parse(await Deno.readTextFile(path));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound && !required) return {};
      if (err instanceof SyntaxError) throw new TomeError("tokenizerInvalid", `${path} is not valid JSON`);
      if (err instanceof Deno.errors.NotFound) throw new TomeError("tokenizerMissing", `no tokenizer.json in ${dir}`);
      throw fsError(err, path, "tokenizer");
    }
  };
  const tokJson = await readJson("tokenizer.json", true);
  const tokConfig = await readJson("tokenizer_config.json", false);
  const metadata = configMetadata(c, basename(resolve(dir)));
  metadata.set("general.file_type", kv.u32(FILE_TYPE[type]));
  for (const [k, v] of tokenizerMetadata(tokJson, tokConfig, c.vocab, dir)) metadata.set(k, v);
  const arch = ggufArch(c.arch);
  const tensors: GgufTensorToWrite[] = [];
  const types: Record<string, number> = {};
  for (const [name, shape] of expectedTensors(c, ckpt.tiedEmbeddings)) {
    const gg = ggufName(name);
    if (!gg) throw new Error(`no GGUF name for ${name}`);
    const dims = [...shape].reverse();
    let t = shape.length === 1 ? "F32" : MATRIX_TYPE[type];
    if (dims[0] % 32 !== 0 && (t === "Q8_0" || t === "Q4_0")) t = "F16";
    types[t] = (types[t] ?? 0) + 1;
    const heads = permuteHeads(arch, name, c.heads, c.kvHeads);
    tensors.push({
      name: gg,
      dims,
      type: t,
      data: async () => {
        const w = await loadTensor(ckpt, name);
        return encodeTensor(t, heads ? permuteRows(w, heads, shape.length > 1 ? shape[1] : 1, true) : w);
      },
    });
  }
  const freqs = ropeFreqsTensor(c);
  if (freqs) {
    tensors.push({
      name: "rope_freqs.weight",
      dims: [freqs.length],
      type: "F32",
      data: () => encodeTensor("F32", freqs),
    });
    types.F32 = (types.F32 ?? 0) + 1;
  }
  await writeGguf(out, metadata, tensors);
  const bytes = (await Deno.stat(out)).size;
  return { out, tensors: tensors.length, bytes, types };
}
