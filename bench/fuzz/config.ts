/**
 * Mutation fuzzer of tome's config.json reading, checked against the weights.
 *
 *   deno run -A bench/fuzz/config.ts [--cases 10000] [--seed 1] [--timeout 5000] [--out bench/results/fuzz]
 *
 * Starts from valid configs of two small models whose weights exist, mutates
 * fields (huge, negative, fractional and non-finite numbers, wrong types,
 * deletions, doubled and halved sizes, other architectures) and bytes (bit
 * flips, truncation, inserted characters), and opens the checkpoint. The
 * checker below restates the bounds and the tensor shapes each config implies.
 */
import { CONFIG_SEEDS } from "./config_seeds.ts";
import { fuzzMain, type FuzzTarget, type Outcome } from "./harness.ts";

/** The maxima tome documents for config.json (restated, not imported). */
const LIMIT: Record<string, number> = {
  num_hidden_layers: 1024,
  hidden_size: 65536,
  num_attention_heads: 1024,
  num_key_value_heads: 1024,
  head_dim: 4096,
  intermediate_size: 1048576,
  vocab_size: 4194304,
  max_position_embeddings: 2 ** 26,
  sliding_window: 2 ** 26,
};
const ARCHES = ["llama", "mistral", "qwen2", "qwen3"];

const pick = <T>(next: () => number, xs: readonly T[]): T => xs[Math.floor(next() * xs.length)];
const INFINITY = "\u0000inf\u0000";

const KEYS = [
  ...Object.keys(LIMIT),
  "model_type",
  "hidden_act",
  "rms_norm_eps",
  "rope_theta",
  "rope_scaling",
  "rope_scaling.factor",
  "rope_scaling.rope_type",
  "rope_scaling.low_freq_factor",
  "rope_scaling.high_freq_factor",
  "rope_scaling.original_max_position_embeddings",
  "tie_word_embeddings",
  "attention_bias",
  "mlp_bias",
  "bos_token_id",
  "eos_token_id",
  "use_sliding_window",
];
const ODD: unknown[] = [
  1e9,
  2 ** 31,
  2 ** 40,
  2 ** 53,
  2 ** 53 + 2,
  1e308,
  INFINITY,
  -1,
  0,
  -0.5,
  0.5,
  1.5,
  "64",
  "",
  null,
  true,
  false,
  [],
  [1],
  {},
  "default",
  "linear",
  "llama3",
  "gelu",
  ...ARCHES,
];

function mutateConfig(c: Record<string, unknown>, next: () => number): void {
  const key = pick(next, KEYS);
  const [outer, inner] = key.split(".");
  let obj = c;
  if (inner) {
    if (typeof c[outer] !== "object" || c[outer] === null) c[outer] = { rope_type: "llama3", factor: 8 };
    obj = c[outer] as Record<string, unknown>;
  }
  const k = inner ?? outer;
  const v = obj[k];
  const r = next();
  if (r < 0.15) delete obj[k];
  else if (r < 0.45 && typeof v === "number") obj[k] = pick(next, [v * 2, v / 2, v + 1, v - 1, v * 1024, -v]);
  else obj[k] = pick(next, ODD);
}

/** The `i`-th case: a seed index byte, then the mutated config.json text. */
export function mutate(next: () => number, _i: number): Uint8Array {
  const seed = Math.floor(next() * CONFIG_SEEDS.length);
  const c = structuredClone(CONFIG_SEEDS[seed]);
  const steps = 1 + Math.floor(next() * 3);
  for (let s = 0; s < steps; s++) mutateConfig(c, next);
  let text = JSON.stringify(c, null, 1).replaceAll(JSON.stringify(INFINITY), "1e309");
  let bytes = new TextEncoder().encode(text);
  if (next() < 0.25) {
    const kind = next();
    if (kind < 0.4) {
      for (let k = 0; k < 1 + next() * 3; k++) bytes[Math.floor(next() * bytes.length)] ^= 1 << Math.floor(next() * 8);
    } else if (kind < 0.7) bytes = bytes.slice(0, Math.floor(next() * bytes.length));
    else {
      text = new TextDecoder().decode(bytes);
      const at = Math.floor(next() * text.length);
      text = text.slice(0, at) + pick(next, ["9", "-", ".5", "e9", "\n", "}", ",", '"', "null", "0"]) + text.slice(at);
      bytes = new TextEncoder().encode(text);
    }
  }
  const out = new Uint8Array(bytes.length + 1);
  out[0] = seed;
  out.set(bytes, 1);
  return out;
}

interface Normalized {
  arch: string;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  maxPositions: number;
  bos: number | null;
  eos: number[];
  tieFlag: boolean;
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  qkNorm: boolean;
}

/** The checker's own reading of a config: normalized values, or why it is invalid. */
export function normalize(raw: unknown): Normalized | string {
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return "not an object";
  const c = raw as Record<string, unknown>;
  if (!ARCHES.includes(c.model_type as string)) return "model_type";
  if ((c.hidden_act ?? "silu") !== "silu") return "hidden_act";
  const bad = Symbol();
  const posInt = (k: string, d?: number): number | typeof bad => {
    const v = c[k] ?? d;
    return typeof v === "number" && Number.isSafeInteger(v) && v > 0 && v <= (LIMIT[k] ?? Infinity) ? v : bad;
  };
  const [hidden, intermediate, layers, heads, vocab] = [
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
  ].map((k) => posInt(k));
  if ([hidden, intermediate, layers, heads, vocab].includes(bad)) return "a size";
  const kvHeads = posInt("num_key_value_heads", heads as number);
  const maxPositions = posInt("max_position_embeddings", 2048);
  if (kvHeads === bad || maxPositions === bad) return "kv heads or positions";
  if ((heads as number) % kvHeads !== 0) return "heads % kv heads";
  const headDim = c.head_dim == null ? (hidden as number) / (heads as number) : posInt("head_dim");
  if (headDim === bad || !Number.isInteger(headDim) || headDim % 2 !== 0 || headDim > 4096) return "head_dim";
  const id = (x: unknown) => typeof x === "number" && Number.isInteger(x) && x >= 0 && x < (vocab as number);
  if (c.bos_token_id != null && !id(c.bos_token_id)) return "bos";
  const eos = c.eos_token_id == null ? [] : Array.isArray(c.eos_token_id) ? c.eos_token_id : [c.eos_token_id];
  if (!eos.every(id)) return "eos";
  if (c.use_sliding_window !== false && c.sliding_window != null && posInt("sliding_window") === bad) return "window";
  const inRange = (x: unknown, hi: number) => typeof x === "number" && x > 0 && x <= hi;
  if (!inRange(c.rms_norm_eps ?? 1e-6, 1) || !inRange(c.rope_theta ?? 10000, 1e30)) return "eps or theta";
  const rs = c.rope_scaling;
  if (rs != null) {
    if (typeof rs !== "object" || Array.isArray(rs)) return "rope_scaling type";
    const r = rs as Record<string, unknown>;
    const type = r.rope_type ?? r.type;
    const f = (x: unknown) => inRange(x, 1e6);
    if (type === "linear") {
      if (!f(r.factor)) return "linear factor";
    } else if (type === "llama3") {
      const [lo, hi, orig] = [
        r.low_freq_factor ?? 1,
        r.high_freq_factor ?? 4,
        r.original_max_position_embeddings ?? 8192,
      ];
      if (!f(r.factor) || !f(lo) || !f(hi) || (lo as number) >= (hi as number)) return "llama3 factors";
      if (!f(orig) || !Number.isSafeInteger(orig)) return "llama3 positions";
    } else if (type !== "default") return "rope type";
  }
  const arch = c.model_type as string;
  return {
    arch,
    hidden: hidden as number,
    intermediate: intermediate as number,
    layers: layers as number,
    heads: heads as number,
    kvHeads,
    headDim,
    vocab: vocab as number,
    maxPositions,
    bos: (c.bos_token_id as number | undefined) ?? null,
    eos: eos as number[],
    tieFlag: c.tie_word_embeddings === true,
    qkvBias: arch === "qwen2" || c.attention_bias === true,
    oBias: arch !== "qwen2" && c.attention_bias === true,
    mlpBias: c.mlp_bias === true,
    qkNorm: arch === "qwen3",
  };
}

/** Every tensor a config needs, with its shape (the checker's own statement of the architecture). */
export function shapesFor(n: Normalized, tied: boolean): Map<string, number[]> {
  const { hidden: D, intermediate: I, heads: H, kvHeads: K, headDim: d, vocab: V } = n;
  const m = new Map<string, number[]>();
  m.set("model.embed_tokens.weight", [V, D]);
  m.set("model.norm.weight", [D]);
  if (!tied) m.set("lm_head.weight", [V, D]);
  for (let l = 0; l < n.layers; l++) {
    const a = `model.layers.${l}.self_attn.`;
    const f = `model.layers.${l}.mlp.`;
    m.set(`model.layers.${l}.input_layernorm.weight`, [D]);
    m.set(`model.layers.${l}.post_attention_layernorm.weight`, [D]);
    m.set(`${a}q_proj.weight`, [H * d, D]);
    m.set(`${a}k_proj.weight`, [K * d, D]);
    m.set(`${a}v_proj.weight`, [K * d, D]);
    m.set(`${a}o_proj.weight`, [D, H * d]);
    m.set(`${f}gate_proj.weight`, [I, D]);
    m.set(`${f}up_proj.weight`, [I, D]);
    m.set(`${f}down_proj.weight`, [D, I]);
    if (n.qkvBias) m.set(`${a}q_proj.bias`, [H * d]).set(`${a}k_proj.bias`, [K * d]).set(`${a}v_proj.bias`, [K * d]);
    if (n.oBias) m.set(`${a}o_proj.bias`, [D]);
    if (n.qkNorm) m.set(`${a}q_norm.weight`, [d]).set(`${a}k_norm.weight`, [d]);
    if (n.mlpBias) m.set(`${f}gate_proj.bias`, [I]).set(`${f}up_proj.bias`, [I]).set(`${f}down_proj.bias`, [D]);
  }
  return m;
}

/** The tensors in each seed's weights file. */
const SEED_FILES = CONFIG_SEEDS.map((raw) => {
  const n = normalize(raw);
  if (typeof n === "string") throw new Error(`seed config invalid: ${n}`);
  return shapesFor(n, n.tieFlag);
});

/** The independent checker: the normalized config a valid case gives with its weights, or why it is invalid. */
export function check(input: Uint8Array): Normalized | string {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(input.subarray(1)));
  } catch {
    return "not JSON";
  }
  const n = normalize(raw);
  if (typeof n === "string") return n;
  const file = SEED_FILES[input[0] % SEED_FILES.length];
  for (const [name, shape] of shapesFor(n, n.tieFlag || !file.has("lm_head.weight"))) {
    const have = file.get(name);
    if (!have) return `missing ${name}`;
    if (have.join() !== shape.join()) return `shape of ${name}`;
  }
  return n;
}

/** The config.json fuzz target. */
export const configTarget: FuzzTarget = {
  name: "config",
  kind: "modelInvalid",
  mutate,
  judge(input: Uint8Array, outcome: Outcome): string | null {
    const want = check(input);
    if (!outcome.accepted) return typeof want === "string" ? null : "rejected-valid";
    if (typeof want === "string") return `accepted an invalid config (${want})`;
    const got = (outcome.result as { config: Record<string, unknown> }).config;
    const pairs: [string, unknown, unknown][] = [
      ["arch", got.arch, want.arch],
      ["hidden", got.hidden, want.hidden],
      ["intermediate", got.intermediate, want.intermediate],
      ["layers", got.layers, want.layers],
      ["heads", got.heads, want.heads],
      ["kvHeads", got.kvHeads, want.kvHeads],
      ["headDim", got.headDim, want.headDim],
      ["vocab", got.vocab, want.vocab],
      ["maxPositions", got.maxPositions, want.maxPositions],
      ["bosTokenId", got.bosTokenId, want.bos],
      ["eosTokenIds", JSON.stringify(got.eosTokenIds), JSON.stringify(want.eos)],
      ["qkvBias", got.qkvBias, want.qkvBias],
      ["qkNorm", got.qkNorm, want.qkNorm],
    ];
    for (const [k, g, w] of pairs) if (g !== w) return `config ${k} read as ${g}, the checker says ${w}`;
    return null;
  },
};

if (import.meta.main) {
  const s = await fuzzMain(configTarget, Deno.args);
  if (s.failures > 0) Deno.exit(1);
}
