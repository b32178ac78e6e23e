import { join } from "node:path";
import { fsError, TomeError } from "../errors.ts";
import { isGgufModel, openGgufCheckpoint } from "./gguf/checkpoint.ts";

/** The architectures tome builds graphs for (Hugging Face `model_type`). */
export const ARCHS = ["llama", "mistral", "qwen2", "qwen3"] as const;
export type Arch = typeof ARCHS[number];

/** `rope_scaling` of a config, normalized. */
export type RopeScaling =
  | { type: "llama3"; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number }
  | { type: "linear"; factor: number }
  /** Per-frequency divisors of θ_i (GGUF's `rope_freqs` tensor); `factor` is the largest. */
  | { type: "factors"; factor: number; factors: number[] };

/** What tome needs of a Hugging Face `config.json`, normalized across architectures. */
export interface ModelConfig {
  arch: Arch;
  hidden: number;
  intermediate: number;
  layers: number;
  /** Query heads. */
  heads: number;
  /** Key/value heads (GQA when fewer than `heads`). */
  kvHeads: number;
  headDim: number;
  vocab: number;
  rmsEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  /** The trained context (`max_position_embeddings`). */
  maxPositions: number;
  tieEmbeddings: boolean;
  /** Biases on the q, k and v projections (Qwen2; Llama with `attention_bias`). */
  qkvBias: boolean;
  /** Bias on the output projection (Llama with `attention_bias`). */
  oBias: boolean;
  mlpBias: boolean;
  /** RMSNorm of each query and key head before RoPE (Qwen3). */
  qkNorm: boolean;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** Mistral's sliding window, recorded only: tome's eviction takes its place. */
  slidingWindow: number | null;
  /** `torch_dtype` as the checkpoint declares it. */
  dtype: string | null;
}

/** Reads and validates `config.json` of a checkpoint directory. */
export async function readConfig(dir: string): Promise<ModelConfig> {
  if (isGgufModel(dir)) return (await openGgufCheckpoint(dir)).config;
  const path = join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new TomeError("modelInvalid", `not a model directory (no config.json): ${dir}`);
    }
    throw fsError(err, path, "model config");
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new TomeError("modelInvalid", `${path} is not valid JSON: ${(err as Error).message}`);
  }
  return parseConfig(raw, path);
}

/** Validates a parsed `config.json`; `where` names it in errors. */
export function parseConfig(raw: unknown, where = "config.json"): ModelConfig {
  if (typeof raw !== "object" || raw === null) throw new TomeError("modelInvalid", `${where} is not a JSON object`);
  const c = raw as Record<string, unknown>;
  const arch = c.model_type;
  if (typeof arch !== "string" || !(ARCHS as readonly string[]).includes(arch)) {
    throw new TomeError(
      "modelInvalid",
      `unsupported model_type ${JSON.stringify(arch)} in ${where} (tome supports ${ARCHS.join(", ")})`,
    );
  }
  const int = (key: string, fallback?: number): number => {
    const v = c[key] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v <= 0) {
      throw new TomeError("modelInvalid", `${where}: ${key} must be a positive integer, got ${JSON.stringify(c[key])}`);
    }
    return v;
  };
  const num = (key: string, fallback: number): number => {
    const v = c[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) {
      throw new TomeError("modelInvalid", `${where}: ${key} must be a positive number, got ${JSON.stringify(c[key])}`);
    }
    return v;
  };
  const act = c.hidden_act ?? "silu";
  if (act !== "silu") {
    throw new TomeError("modelInvalid", `${where}: hidden_act ${JSON.stringify(act)} is not supported (silu only)`);
  }
  const hidden = int("hidden_size");
  const heads = int("num_attention_heads");
  const kvHeads = int("num_key_value_heads", heads);
  if (heads % kvHeads !== 0) {
    throw new TomeError(
      "modelInvalid",
      `${where}: ${heads} attention heads do not divide into ${kvHeads} key/value heads`,
    );
  }
  const headDim = c.head_dim == null ? hidden / heads : int("head_dim");
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) {
    throw new TomeError("modelInvalid", `${where}: head dimension ${headDim} must be an even integer`);
  }
  const eos = c.eos_token_id;
  const attentionBias = c.attention_bias === true;
  return {
    arch: arch as Arch,
    hidden,
    intermediate: int("intermediate_size"),
    layers: int("num_hidden_layers"),
    heads,
    kvHeads,
    headDim,
    vocab: int("vocab_size"),
    rmsEps: num("rms_norm_eps", 1e-6),
    ropeTheta: num("rope_theta", 10000),
    ropeScaling: parseRopeScaling(c.rope_scaling, where),
    maxPositions: int("max_position_embeddings", 2048),
    tieEmbeddings: c.tie_word_embeddings === true,
    qkvBias: arch === "qwen2" || attentionBias,
    oBias: arch !== "qwen2" && attentionBias,
    mlpBias: c.mlp_bias === true,
    qkNorm: arch === "qwen3",
    bosTokenId: typeof c.bos_token_id === "number" ? c.bos_token_id : null,
    eosTokenIds: Array.isArray(eos) ? eos.filter((x) => typeof x === "number") : typeof eos === "number" ? [eos] : [],
    slidingWindow: typeof c.sliding_window === "number" && c.use_sliding_window !== false ? c.sliding_window : null,
    dtype: typeof c.torch_dtype === "string" ? c.torch_dtype : null,
  };
}

function parseRopeScaling(raw: unknown, where: string): RopeScaling | null {
  if (raw == null) return null;
  if (typeof raw !== "object") throw new TomeError("modelInvalid", `${where}: rope_scaling must be an object`);
  const r = raw as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  const factor = typeof r.factor === "number" ? r.factor : NaN;
  if (type === "default") return null;
  if (type === "linear" && factor > 0) return { type: "linear", factor };
  if (type === "llama3" && factor > 0) {
    return {
      type: "llama3",
      factor,
      lowFreqFactor: Number(r.low_freq_factor ?? 1),
      highFreqFactor: Number(r.high_freq_factor ?? 4),
      originalMaxPositions: Number(r.original_max_position_embeddings ?? 8192),
    };
  }
  throw new TomeError(
    "modelInvalid",
    `${where}: rope_scaling ${JSON.stringify(raw)} is not supported (llama3, linear)`,
  );
}

/** Bytes of K and V for one token across all layers, at `bytesPerElement` (4 for f32, 2 for f16). */
export function kvBytesPerToken(c: ModelConfig, bytesPerElement: number): number {
  return 2 * c.layers * c.kvHeads * c.headDim * bytesPerElement;
}
