/**
 * The reference forward pass: Llama / Mistral / Qwen2 / Qwen3 written from the
 * equations with Float32Array loops and nothing else. It is the numeric oracle
 * the ONNX graph is checked against, so it favours plainness over speed; the
 * graph builder (`onnx/decoder.ts`) mirrors it step for step, same names.
 */
import { type Checkpoint, layerTensorNames, loadTensor } from "./checkpoint.ts";
import type { ModelConfig, PositionMode } from "./config.ts";
import { inverseFrequencies, rotate } from "./rope.ts";

/** One layer's weights, Hugging Face layout (linear weights [out, in]). */
export interface LayerWeights {
  attnNorm: Float32Array;
  wq: Float32Array;
  wk: Float32Array;
  wv: Float32Array;
  wo: Float32Array;
  bq?: Float32Array;
  bk?: Float32Array;
  bv?: Float32Array;
  bo?: Float32Array;
  qNorm?: Float32Array;
  kNorm?: Float32Array;
  mlpNorm: Float32Array;
  wGate: Float32Array;
  wUp: Float32Array;
  wDown: Float32Array;
  bGate?: Float32Array;
  bUp?: Float32Array;
  bDown?: Float32Array;
}

/** All weights as float32: a flat struct of named arrays. */
export interface Weights {
  embed: Float32Array;
  layers: LayerWeights[];
  norm: Float32Array;
  /** [vocab, hidden]; the embedding itself when tied. */
  lmHead: Float32Array;
}

/** Loads every weight of a checkpoint into memory (for small models: tests and oracles). */
export async function loadWeights(ckpt: Checkpoint): Promise<Weights> {
  const c = ckpt.config;
  const layers: LayerWeights[] = [];
  for (let i = 0; i < c.layers; i++) {
    const names = layerTensorNames(i);
    const layer: Record<string, Float32Array> = {};
    for (const [key, name] of Object.entries(names)) {
      if (ckpt.tensors.has(name)) layer[key] = await loadTensor(ckpt, name);
    }
    layers.push(layer as unknown as LayerWeights);
  }
  const embed = await loadTensor(ckpt, "model.embed_tokens.weight");
  return {
    embed,
    layers,
    norm: await loadTensor(ckpt, "model.norm.weight"),
    lmHead: ckpt.tiedEmbeddings ? embed : await loadTensor(ckpt, "lm_head.weight"),
  };
}

/** Cached keys and values of one layer, [kvHeads, P, headDim] each. */
export interface PastLayer {
  keys: Float32Array;
  values: Float32Array;
}

/** Cache handed to a forward pass, as the graph receives it. */
export interface Past {
  /** Slots per layer (every layer alike here). */
  length: number;
  layers: PastLayer[];
  /** Compact mode: the position each cached (unrotated) key is rotated to. */
  positions?: ArrayLike<number>;
  /** Valid entries per layer and KV head ([layer][head]); slots past them are ignored. Default: all. */
  lengths?: number[][];
}

export interface ForwardOutput {
  /** [S, vocab] */
  logits: Float32Array;
  /** Per layer [kvHeads, S, headDim]: rotated in `original` mode, unrotated in `compact`. */
  newKeys: Float32Array[];
  newValues: Float32Array[];
  /** Per layer attention probabilities [heads, S, P + S] (zero where causally masked). */
  probs: Float32Array[];
  /** Per layer the q, k, v projections [S, ·] before norms and RoPE (what Locret's retaining heads read). */
  projections: { q: Float32Array; k: Float32Array; v: Float32Array }[];
  /** Per layer the queries [S, heads, headDim] as attention reads them: after norms and RoPE. */
  queries: Float32Array[];
}

/** y[s] = W x[s] + b for each of S rows: x [S, n], W [m, n] → [S, m]. */
export function linear(
  x: Float32Array,
  w: Float32Array,
  b: Float32Array | undefined,
  S: number,
  n: number,
  m: number,
): Float32Array {
  const y = new Float32Array(S * m);
  for (let s = 0; s < S; s++) {
    for (let j = 0; j < m; j++) {
      let acc = b ? b[j] : 0;
      for (let i = 0; i < n; i++) acc += x[s * n + i] * w[j * n + i];
      y[s * m + j] = acc;
    }
  }
  return y;
}

/** RMSNorm of each length-n row: x / sqrt(mean(x²) + ε) · w. */
export function rmsnorm(x: Float32Array, w: Float32Array, rows: number, n: number, eps: number): Float32Array {
  const y = new Float32Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += x[r * n + i] * x[r * n + i];
    const scale = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) y[r * n + i] = Math.fround(x[r * n + i] * scale) * w[i];
  }
  return y;
}

const silu = (x: number) => x / (1 + Math.exp(-x));

/**
 * Runs S new tokens (`ids` at `positions`) over an optional cache. Token s sees
 * every cached entry and the new tokens 0..s (causal).
 */
export function forward(
  c: ModelConfig,
  w: Weights,
  ids: ArrayLike<number>,
  positions: ArrayLike<number>,
  past: Past = { length: 0, layers: [] },
  mode: PositionMode = "original",
): ForwardOutput {
  const { hidden: D, heads: H, kvHeads: K, headDim: d, intermediate: I, vocab: V } = c;
  const S = ids.length;
  const P = past.length;
  const T = P + S;
  const g = H / K;
  const inv = inverseFrequencies(c);
  const scale = 1 / Math.sqrt(d);

  // embed
  let x: Float32Array = new Float32Array(S * D);
  for (let s = 0; s < S; s++) x.set(w.embed.subarray(ids[s] * D, ids[s] * D + D), s * D);

  const newKeys: Float32Array[] = [];
  const newValues: Float32Array[] = [];
  const probs: Float32Array[] = [];
  const projections: ForwardOutput["projections"] = [];
  const queries: Float32Array[] = [];
  for (let l = 0; l < c.layers; l++) {
    const lw = w.layers[l];
    // attention: RMSNorm → q, k, v projections → (Qwen3) per-head q/k RMSNorm → RoPE
    const xb = rmsnorm(x, lw.attnNorm, S, D, c.rmsEps);
    const q = linear(xb, lw.wq, lw.bq, S, D, H * d);
    let k = linear(xb, lw.wk, lw.bk, S, D, K * d);
    const v = linear(xb, lw.wv, lw.bv, S, D, K * d);
    projections.push({ q: q.slice(), k: k.slice(), v });
    if (lw.qNorm && lw.kNorm) {
      q.set(rmsnorm(q, lw.qNorm, S * H, d, c.rmsEps));
      k = rmsnorm(k, lw.kNorm, S * K, d, c.rmsEps);
    }
    const kRaw = k.slice();
    for (let s = 0; s < S; s++) {
      for (let h = 0; h < H; h++) rotate(q, (s * H + h) * d, positions[s], inv);
      for (let h = 0; h < K; h++) rotate(k, (s * K + h) * d, positions[s], inv);
    }
    // the cached keys this pass attends to, rotated
    let pastK = past.layers[l]?.keys ?? new Float32Array(0);
    const pastV = past.layers[l]?.values ?? new Float32Array(0);
    if (mode === "compact" && P > 0) {
      pastK = pastK.slice();
      for (let h = 0; h < K; h++) for (let p = 0; p < P; p++) rotate(pastK, (h * P + p) * d, past.positions![p], inv);
    }
    // scaled dot-product attention over [past ; new], causal over new; query head h reads KV head ⌊h / g⌋
    const att = new Float32Array(H * S * T);
    const out = new Float32Array(S * H * d);
    for (let h = 0; h < H; h++) {
      const kv = Math.floor(h / g);
      const valid = past.lengths?.[l][kv] ?? P;
      const visible = (t: number) => t >= P || t < valid;
      for (let s = 0; s < S; s++) {
        const row = att.subarray((h * S + s) * T, (h * S + s + 1) * T);
        const qo = (s * H + h) * d;
        let max = -Infinity;
        for (let t = 0; t < P + s + 1; t++) {
          if (!visible(t)) continue;
          let dot = 0;
          if (t < P) { for (let i = 0; i < d; i++) dot += q[qo + i] * pastK[(kv * P + t) * d + i]; }
          else for (let i = 0; i < d; i++) dot += q[qo + i] * k[((t - P) * K + kv) * d + i];
          row[t] = dot * scale;
          if (row[t] > max) max = row[t];
        }
        let sum = 0;
        for (let t = 0; t < P + s + 1; t++) sum += row[t] = visible(t) ? Math.exp(row[t] - max) : 0;
        for (let t = 0; t < P + s + 1; t++) row[t] /= sum;
        for (let i = 0; i < d; i++) {
          let acc = 0;
          for (let t = 0; t < P + s + 1; t++) {
            acc += row[t] * (t < P ? pastV[(kv * P + t) * d + i] : v[((t - P) * K + kv) * d + i]);
          }
          out[qo + i] = acc;
        }
      }
    }
    probs.push(att);
    queries.push(q);
    newKeys.push(headsFirst(mode === "compact" ? kRaw : k, S, K, d));
    newValues.push(headsFirst(v, S, K, d));
    const o = linear(out, lw.wo, lw.bo, S, H * d, D);
    for (let i = 0; i < x.length; i++) x[i] += o[i];

    // MLP: RMSNorm → SwiGLU → residual
    const xm = rmsnorm(x, lw.mlpNorm, S, D, c.rmsEps);
    const gate = linear(xm, lw.wGate, lw.bGate, S, D, I);
    const up = linear(xm, lw.wUp, lw.bUp, S, D, I);
    for (let i = 0; i < gate.length; i++) gate[i] = silu(gate[i]) * up[i];
    const down = linear(gate, lw.wDown, lw.bDown, S, I, D);
    for (let i = 0; i < x.length; i++) x[i] += down[i];
  }
  x = rmsnorm(x, w.norm, S, D, c.rmsEps);
  return { logits: linear(x, w.lmHead, undefined, S, D, V), newKeys, newValues, probs, projections, queries };
}

/** [S, heads, d] → [heads, S, d] */
function headsFirst(x: Float32Array, S: number, heads: number, d: number): Float32Array {
  const y = new Float32Array(x.length);
  for (let s = 0; s < S; s++) {
    for (let h = 0; h < heads; h++) y.set(x.subarray((s * heads + h) * d, (s * heads + h + 1) * d), (h * S + s) * d);
  }
  return y;
}

/** Appends new entries [K, S, d] to a cache layer [K, P, d] → [K, P + S, d]. */
export function appendEntries(past: Float32Array, P: number, fresh: Float32Array, S: number, K: number, d: number) {
  const y = new Float32Array(K * (P + S) * d);
  for (let h = 0; h < K; h++) {
    y.set(past.subarray(h * P * d, (h + 1) * P * d), h * (P + S) * d);
    y.set(fresh.subarray(h * S * d, (h + 1) * S * d), (h * (P + S) + P) * d);
  }
  return y;
}
