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

/**
 * The largest values tome accepts in `config.json` (the largest released
 * checkpoints are well inside them): a hostile or corrupt config is refused
 * before anything is sized from it.
 */
export const LIMITS: Record<string, number> = {
  num_hidden_layers: 1024,
  hidden_size: 65536,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 4096,
  intermediate_size: 1048576,
  vocab_size: 4194304,
  max_position_embeddings: 1 << 26,
  sliding_window: 1 << 26,
};

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
    throw new TomeError(
      "modelInvalid",
      `${path} is not valid JSON: ${(err as Error).message.replace(/\s+/g, " ").slice(0, 200)}`,
    );
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
    const max = LIMITS[key] ?? Number.MAX_SAFE_INTEGER;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0 || v > max) {
      throw new TomeError(
        "modelInvalid",
        `${where}: ${key} must be a positive integer${max < Number.MAX_SAFE_INTEGER ? ` ≤ ${max}` : ""}, got ${
          shown(c[key] ?? null)
        }`,
      );
    }
    return v;
  };
  const num = (key: string, fallback: number, max = Number.MAX_VALUE): number => {
    const v = c[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0 || v > max) {
      throw new TomeError(
        "modelInvalid",
        `${where}: ${key} must be a positive number${max < Number.MAX_VALUE ? ` ≤ ${max}` : ""}, got ${shown(c[key])}`,
      );
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
  if (kvHeads > heads || heads % kvHeads !== 0) {
    throw new TomeError(
      "modelInvalid",
      `${where}: ${heads} attention heads do not divide into ${kvHeads} key/value heads`,
    );
  }
  const headDim = c.head_dim == null ? hidden / heads : int("head_dim");
  if (!Number.isInteger(headDim) || headDim % 2 !== 0 || headDim > LIMITS.head_dim) {
    throw new TomeError(
      "modelInvalid",
      `${where}: head dimension ${headDim} must be an even integer ≤ ${LIMITS.head_dim}`,
    );
  }
  const vocab = int("vocab_size");
  const tokenId = (key: string, v: unknown): number => {
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v >= vocab) {
      throw new TomeError(
        "modelInvalid",
        `${where}: ${key} ${shown(v)} is not a token id (0 ≤ id < vocab_size ${vocab})`,
      );
    }
    return v;
  };
  const eos = c.eos_token_id;
  const eosTokenIds = eos == null ? [] : (Array.isArray(eos) ? eos : [eos]).map((x) => tokenId("eos_token_id", x));
  const window = c.use_sliding_window !== false && c.sliding_window != null ? int("sliding_window") : null;
  const attentionBias = c.attention_bias === true;
  return {
    arch: arch as Arch,
    hidden,
    intermediate: int("intermediate_size"),
    layers: int("num_hidden_layers"),
    heads,
    kvHeads,
    headDim,
    vocab,
    rmsEps: num("rms_norm_eps", 1e-6, 1),
    ropeTheta: num("rope_theta", 10000, 1e30),
    ropeScaling: parseRopeScaling(c.rope_scaling, where),
    maxPositions: int("max_position_embeddings", 2048),
    tieEmbeddings: c.tie_word_embeddings === true,
    qkvBias: arch === "qwen2" || attentionBias,
    oBias: arch !== "qwen2" && attentionBias,
    mlpBias: c.mlp_bias === true,
    qkNorm: arch === "qwen3",
    bosTokenId: c.bos_token_id == null ? null : tokenId("bos_token_id", c.bos_token_id),
    eosTokenIds,
    slidingWindow: window,
    dtype: typeof c.torch_dtype === "string" ? c.torch_dtype : null,
  };
}

/** A config value as it appears in an error message (numbers as written, Infinity included). */
function shown(v: unknown): string {
  return typeof v === "number" ? String(v) : (JSON.stringify(v) ?? String(v)).slice(0, 100);
}

function parseRopeScaling(raw: unknown, where: string): RopeScaling | null {
  if (raw == null) return null;
  if (typeof raw !== "object" || Array.isArray(raw)) {
    throw new TomeError("modelInvalid", `${where}: rope_scaling must be an object`);
  }
  const r = raw as Record<string, unknown>;
  const type = r.rope_type ?? r.type;
  const factor = typeof r.factor === "number" ? r.factor : NaN;
  if (type === "default") return null;
  const ok = (x: unknown): x is number => typeof x === "number" && Number.isFinite(x) && x > 0 && x <= 1e6;
  if (type === "linear" && ok(factor)) return { type: "linear", factor };
  if (type === "llama3" && ok(factor)) {
    const scaling = {
      type: "llama3" as const,
      factor,
      lowFreqFactor: r.low_freq_factor ?? 1,
      highFreqFactor: r.high_freq_factor ?? 4,
      originalMaxPositions: r.original_max_position_embeddings ?? 8192,
    };
    if (
      ok(scaling.lowFreqFactor) && ok(scaling.highFreqFactor) && scaling.lowFreqFactor < scaling.highFreqFactor &&
      Number.isSafeInteger(scaling.originalMaxPositions) && ok(scaling.originalMaxPositions)
    ) {
      return scaling as RopeScaling;
    }
  }
  throw new TomeError(
    "modelInvalid",
    `${where}: rope_scaling ${JSON.stringify(raw).slice(0, 200)} is not supported (llama3, linear)`,
  );
}

/** Bytes of K and V for one token across all layers, at `bytesPerElement` (4 for f32, 2 for f16). */
export function kvBytesPerToken(c: ModelConfig, bytesPerElement: number): number {
  return 2 * c.layers * c.kvHeads * c.headDim * bytesPerElement;
}

/**
 * Position modes. `original`: keys are cached after RoPE at their token
 * positions. `compact`: keys are cached before RoPE and rotated at every pass
 * to the positions given for the cache (their slot numbers).
 */
export type PositionMode = "original" | "compact";

/** The KV cache's element type. */
export type KvDtype = "float32" | "float16";

/** Bytes of one KV element. */
export function kvElementBytes(dtype: KvDtype): number {
  return dtype === "float32" ? 4 : 2;
}
