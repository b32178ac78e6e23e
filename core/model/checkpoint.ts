import { basename, join } from "node:path";
import { fsError, TomeError } from "../errors.ts";
import { type ModelConfig, readConfig } from "./config.ts";
import { readHeader, readTensor, type TensorInfo } from "./safetensors.ts";
import type { BlockQuant } from "../../kernels/quant.ts";
import { isGgufModel, openGgufCheckpoint } from "./gguf/checkpoint.ts";

/** An opened Hugging Face checkpoint directory: config, and where every tensor lies. */
export interface Checkpoint {
  dir: string;
  config: ModelConfig;
  tensors: Map<string, TensorInfo>;
  /** The weight files with size and modification time: what the graph cache key hashes. */
  files: { name: string; size: number; mtime: number }[];
  /** True when the output projection is the embedding (tied, or no `lm_head.weight`). */
  tiedEmbeddings: boolean;
  /** Set by GGUF checkpoints: reads one tensor as float32 in Hugging Face layout. */
  readTensor?: (name: string) => Promise<Float32Array>;
  /** Set by GGUF checkpoints: hashed into the graph cache key in place of config.json. */
  identity?: string;
  /** Set by GGUF checkpoints: each tensor's GGML type (Q8_0, Q4_K, F16 …) under its Hugging Face name. */
  ggmlTypes?: Map<string, string>;
  /**
   * Set by GGUF checkpoints: a matrix's own blocks as `bits`-wide MatMulNBits blocks of 32, in Hugging Face
   * layout, when its type takes them unchanged (Q8_0, Q4_0: `kernels/gguf_blocks.ts`); else null.
   */
  readBlocks?: (name: string, bits: 4 | 8) => Promise<BlockQuant | null>;
}

/** Names of one layer's tensors, prefix `model.layers.N.`. */
export function layerTensorNames(i: number): Record<string, string> {
  const p = `model.layers.${i}.`;
  return {
    attnNorm: `${p}input_layernorm.weight`,
    wq: `${p}self_attn.q_proj.weight`,
    bq: `${p}self_attn.q_proj.bias`,
    wk: `${p}self_attn.k_proj.weight`,
    bk: `${p}self_attn.k_proj.bias`,
    wv: `${p}self_attn.v_proj.weight`,
    bv: `${p}self_attn.v_proj.bias`,
    qNorm: `${p}self_attn.q_norm.weight`,
    kNorm: `${p}self_attn.k_norm.weight`,
    wo: `${p}self_attn.o_proj.weight`,
    bo: `${p}self_attn.o_proj.bias`,
    mlpNorm: `${p}post_attention_layernorm.weight`,
    wGate: `${p}mlp.gate_proj.weight`,
    bGate: `${p}mlp.gate_proj.bias`,
    wUp: `${p}mlp.up_proj.weight`,
    bUp: `${p}mlp.up_proj.bias`,
    wDown: `${p}mlp.down_proj.weight`,
    bDown: `${p}mlp.down_proj.bias`,
  };
}

/** Every tensor the architecture needs, with its shape (Hugging Face layout: linear weights are [out, in]). */
export function expectedTensors(c: ModelConfig, tied: boolean): Map<string, number[]> {
  const { hidden: D, heads: H, kvHeads: K, headDim: d, intermediate: I, vocab: V } = c;
  const m = new Map<string, number[]>([["model.embed_tokens.weight", [V, D]], ["model.norm.weight", [D]]]);
  if (!tied) m.set("lm_head.weight", [V, D]);
  for (let i = 0; i < c.layers; i++) {
    const n = layerTensorNames(i);
    m.set(n.attnNorm, [D]).set(n.mlpNorm, [D]);
    m.set(n.wq, [H * d, D]).set(n.wk, [K * d, D]).set(n.wv, [K * d, D]).set(n.wo, [D, H * d]);
    m.set(n.wGate, [I, D]).set(n.wUp, [I, D]).set(n.wDown, [D, I]);
    if (c.qkvBias) m.set(n.bq, [H * d]).set(n.bk, [K * d]).set(n.bv, [K * d]);
    if (c.oBias) m.set(n.bo, [D]);
    if (c.qkNorm) m.set(n.qNorm, [d]).set(n.kNorm, [d]);
    if (c.mlpBias) m.set(n.bGate, [I]).set(n.bUp, [I]).set(n.bDown, [D]);
  }
  return m;
}

/**
 * Opens a checkpoint directory: `config.json`, and `model.safetensors` or the
 * shards named by `model.safetensors.index.json` (else every `*.safetensors`).
 * Reads only the headers; checks that every tensor the architecture needs is
 * there with the right shape.
 */
export async function openCheckpoint(dir: string): Promise<Checkpoint> {
  if (isGgufModel(dir)) return openGgufCheckpoint(dir);
  try {
    if (!(await Deno.stat(dir)).isDirectory) throw new TomeError("modelInvalid", `model is not a directory: ${dir}`);
  } catch (err) {
    throw fsError(err, dir, "model directory");
  }
  const config = await readConfig(dir);
  const { files: names, index } = await weightFiles(dir);
  const tensors = new Map<string, TensorInfo>();
  const files = [];
  for (const name of names) {
    const path = join(dir, name);
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(path);
    } catch (err) {
      if (index && err instanceof Deno.errors.NotFound) {
        throw new TomeError("modelInvalid", `${dir}: weights file ${name} named by ${INDEX} is missing`);
      }
      throw fsError(err, path, "weights file");
    }
    if (!st.isFile) throw new TomeError("modelInvalid", `${dir}: weights file ${name} is not a file`);
    files.push({ name, size: st.size, mtime: st.mtime?.getTime() ?? 0 });
    for (const [k, v] of await readHeader(path)) {
      const other = tensors.get(k);
      if (other) {
        throw new TomeError("modelInvalid", `${dir}: tensor ${k} is in both ${basename(other.file)} and ${name}`);
      }
      tensors.set(k, v);
    }
  }
  for (const [tensor, file] of index ?? []) {
    const t = tensors.get(tensor);
    if (t && basename(t.file) !== file) {
      throw new TomeError(
        "modelInvalid",
        `${dir}: ${INDEX} puts tensor ${tensor} in ${file}, but it is in ${basename(t.file)}`,
      );
    }
  }
  const tied = config.tieEmbeddings || !tensors.has("lm_head.weight");
  for (const [name, shape] of expectedTensors(config, tied)) {
    const t = tensors.get(name);
    if (!t) {
      throw new TomeError("modelInvalid", `${dir}: missing tensor ${name} (${config.arch}, ${config.layers} layers)`);
    }
    if (t.shape.join() !== shape.join()) {
      throw new TomeError(
        "modelInvalid",
        `${dir}: tensor ${name} has shape [${t.shape}], config.json implies [${shape}]`,
      );
    }
  }
  return { dir, config, tensors, files, tiedEmbeddings: tied };
}

/**
 * Refuses a tokenizer whose ids reach past the model's embedding rows
 * (`vocab_size`): such ids would fail inside onnxruntime in the middle of a read.
 */
export function checkTokenizerFits(ckpt: Checkpoint, tokenizerVocab: number): void {
  const rows = ckpt.tensors.get("model.embed_tokens.weight")?.shape[0] ?? ckpt.config.vocab;
  if (tokenizerVocab > rows) {
    throw new TomeError(
      "modelInvalid",
      `${ckpt.dir}: the tokenizer has ${tokenizerVocab} tokens but the embedding (model.embed_tokens.weight) has ${rows} rows`,
    );
  }
}

/** Reads one tensor of the checkpoint as float32. */
export function loadTensor(ckpt: Checkpoint, name: string): Promise<Float32Array> {
  if (ckpt.readTensor) return ckpt.readTensor(name);
  const t = ckpt.tensors.get(name);
  if (!t) throw new TomeError("modelInvalid", `${ckpt.dir}: missing tensor ${name}`);
  return readTensor(t);
}

const INDEX = "model.safetensors.index.json";

/** The weight files to read; `index` (tensor → file) when `model.safetensors.index.json` names them. */
async function weightFiles(dir: string): Promise<{ files: string[]; index: Map<string, string> | null }> {
  const path = join(dir, INDEX);
  let text: string | null = null;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw fsError(err, path, "weights index");
  }
  if (text !== null) {
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new TomeError(
        "modelInvalid",
        `${path} is not valid JSON: ${(err as Error).message.replace(/\s+/g, " ").slice(0, 200)}`,
      );
    }
    const map = (json as { weight_map?: unknown } | null)?.weight_map;
    if (typeof map !== "object" || map === null || Array.isArray(map)) {
      throw new TomeError("modelInvalid", `${path}: weight_map must be an object of tensor name → file name`);
    }
    const index = new Map<string, string>();
    for (const [tensor, file] of Object.entries(map)) {
      if (typeof file !== "string" || basename(file) !== file || file === "" || file === "." || file === "..") {
        throw new TomeError("modelInvalid", `${path}: tensor ${tensor} names ${JSON.stringify(file)}, not a file name`);
      }
      index.set(tensor, file);
    }
    if (index.size === 0) throw new TomeError("modelInvalid", `${path} names no weight files`);
    return { files: [...new Set(index.values())].sort(), index };
  }
  const files: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.isFile && e.name.endsWith(".safetensors")) files.push(e.name);
  if (files.length === 0) {
    const hasOther = await Deno.stat(join(dir, "pytorch_model.bin")).then(() => true, () => false);
    throw new TomeError(
      "modelInvalid",
      `no *.safetensors weights in ${dir}${
        hasOther ? " (pytorch_model.bin is not supported: convert it to safetensors)" : ""
      }`,
    );
  }
  return { files: files.sort(), index: null };
}
