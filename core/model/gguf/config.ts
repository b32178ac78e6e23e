/**
 * GGUF metadata ↔ tome's ModelConfig: `{arch}.block_count`, `…embedding_length`,
 * `…attention.head_count(_kv)`, `…rope.freq_base`, rope scaling (linear, or a
 * `rope_freqs` tensor of per-frequency divisors as llama.cpp stores Llama 3's).
 */
import { TomeError } from "../../errors.ts";
import type { Arch, ModelConfig, RopeScaling } from "../config.ts";
import { inverseFrequencies } from "../rope.ts";
import { type GgufHeader, type GgufKv, meta } from "./format.ts";
import { ggufArch } from "./names.ts";
import { kv } from "./writer.ts";

/** GGUF architectures tome reads. */
export const GGUF_ARCHS = ["llama", "qwen2", "qwen3"] as const;

/** ModelConfig of a GGUF file; `ropeFreqs` is the dequantized `rope_freqs.weight` when the file has one. */
export function configFromGguf(h: GgufHeader, ropeFreqs: Float32Array | null): ModelConfig {
  const bad = (msg: string): never => {
    throw new TomeError("modelInvalid", `${h.path}: ${msg}`);
  };
  const arch = meta(h, "general.architecture");
  if (typeof arch !== "string" || !(GGUF_ARCHS as readonly string[]).includes(arch)) {
    bad(`architecture ${JSON.stringify(arch)} is not supported (tome reads ${GGUF_ARCHS.join(", ")})`);
  }
  const a = arch as string;
  const num = (key: string, fallback?: number): number => {
    let v = meta(h, `${a}.${key}`) ?? fallback;
    // per-layer arrays (some files store head counts per layer): all equal or unsupported
    if (Array.isArray(v)) {
      const vals = v as number[];
      if (vals.length === 0 || vals.some((x) => x !== vals[0])) bad(`${a}.${key} varies per layer`);
      v = vals[0];
    }
    if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) bad(`${a}.${key} is missing or not positive`);
    return v as number;
  };
  const int = (key: string, fallback?: number): number => {
    const v = num(key, fallback);
    if (!Number.isInteger(v)) bad(`${a}.${key} must be an integer`);
    return v;
  };
  const has = (name: string) => h.tensors.some((t) => t.name === name);
  const embd = h.tensors.find((t) => t.name === "token_embd.weight");
  if (!embd) bad("no token_embd.weight tensor");
  const hidden = int("embedding_length");
  const heads = int("attention.head_count");
  const kvHeads = int("attention.head_count_kv", heads);
  if (heads % kvHeads !== 0) bad(`${heads} attention heads do not divide into ${kvHeads} key/value heads`);
  const headDim = int("attention.key_length", hidden / heads);
  if (headDim % 2 !== 0) bad(`head dimension ${headDim} must be even`);
  const ropeDims = meta(h, `${a}.rope.dimension_count`);
  if (typeof ropeDims === "number" && ropeDims !== headDim) {
    bad(`partial RoPE (${ropeDims} of ${headDim} dimensions) is not supported`);
  }
  const ids = (...keys: string[]) =>
    keys.map((k) => meta(h, `tokenizer.ggml.${k}`)).filter((x): x is number => typeof x === "number");
  return {
    arch: a as Arch,
    hidden,
    intermediate: int("feed_forward_length"),
    layers: int("block_count"),
    heads,
    kvHeads,
    headDim,
    vocab: embd!.dims[1] ?? 0,
    rmsEps: num("attention.layer_norm_rms_epsilon", 1e-6),
    ropeTheta: num("rope.freq_base", 10000),
    ropeScaling: ropeScaling(h, a, ropeFreqs, headDim, bad),
    maxPositions: int("context_length", 2048),
    tieEmbeddings: !has("output.weight"),
    qkvBias: has("blk.0.attn_q.bias"),
    oBias: has("blk.0.attn_output.bias"),
    mlpBias: has("blk.0.ffn_gate.bias"),
    qkNorm: a === "qwen3",
    bosTokenId: ids("bos_token_id")[0] ?? null,
    eosTokenIds: [...new Set(ids("eos_token_id", "eot_token_id", "eom_token_id"))],
    slidingWindow: null,
    dtype: null,
  };
}

function ropeScaling(
  h: GgufHeader,
  a: string,
  freqs: Float32Array | null,
  headDim: number,
  bad: (m: string) => never,
): RopeScaling | null {
  const type = meta(h, `${a}.rope.scaling.type`);
  const factor = meta(h, `${a}.rope.scaling.factor`) ?? meta(h, `${a}.rope.scale_linear`);
  if (freqs) {
    if (freqs.length !== headDim / 2) bad(`rope_freqs.weight has ${freqs.length} values, expected ${headDim / 2}`);
    if (![...freqs].every((x) => Number.isFinite(x) && x > 0)) bad("rope_freqs.weight has non-positive values");
    return { type: "factors", factor: Math.max(...freqs), factors: [...freqs] };
  }
  if (type === "linear" || (type === undefined && typeof factor === "number" && factor !== 1)) {
    if (typeof factor !== "number" || !(factor > 0)) bad("linear RoPE scaling without a positive factor");
    return { type: "linear", factor: factor as number };
  }
  if (type === undefined || type === "none") return null;
  return bad(`RoPE scaling ${JSON.stringify(type)} is not supported (linear, llama3 rope_freqs)`);
}

/** The `{arch}.*` metadata llama.cpp expects for a config. */
export function configMetadata(c: ModelConfig, name: string): Map<string, GgufKv> {
  const a = ggufArch(c.arch);
  const m = new Map<string, GgufKv>();
  m.set("general.architecture", kv.str(a));
  m.set("general.name", kv.str(name));
  m.set(`${a}.context_length`, kv.u32(c.maxPositions));
  m.set(`${a}.embedding_length`, kv.u32(c.hidden));
  m.set(`${a}.block_count`, kv.u32(c.layers));
  m.set(`${a}.feed_forward_length`, kv.u32(c.intermediate));
  m.set(`${a}.attention.head_count`, kv.u32(c.heads));
  m.set(`${a}.attention.head_count_kv`, kv.u32(c.kvHeads));
  m.set(`${a}.attention.key_length`, kv.u32(c.headDim));
  m.set(`${a}.attention.value_length`, kv.u32(c.headDim));
  m.set(`${a}.rope.dimension_count`, kv.u32(c.headDim));
  m.set(`${a}.rope.freq_base`, kv.f32(c.ropeTheta));
  m.set(`${a}.attention.layer_norm_rms_epsilon`, kv.f32(c.rmsEps));
  m.set(`${a}.vocab_size`, kv.u32(c.vocab));
  if (c.ropeScaling?.type === "linear") {
    m.set(`${a}.rope.scaling.type`, kv.str("linear"));
    m.set(`${a}.rope.scaling.factor`, kv.f32(c.ropeScaling.factor));
  }
  return m;
}

/**
 * The `rope_freqs.weight` tensor for a scaling llama.cpp expresses as
 * per-frequency divisors (llama3, or factors read from a GGUF), else null.
 */
export function ropeFreqsTensor(c: ModelConfig): Float32Array | null {
  const s = c.ropeScaling;
  if (s?.type === "factors") return Float32Array.from(s.factors);
  if (s?.type !== "llama3") return null;
  const plain = inverseFrequencies({ ...c, ropeScaling: null });
  const scaled = inverseFrequencies(c);
  return plain.map((p, i) => p / scaled[i]);
}
