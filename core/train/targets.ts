/**
 * What Locret's retaining heads learn from, per sample: each prompt token's
 * features (its [q; k; v] projections, before norms and RoPE, as the graph's
 * retaining head reads them) and its causal importance score (CIS) — the
 * largest attention it receives from any query of the answer span, max over
 * the KV head's query group (Locret's definition; the graph's `max`
 * statistic sums over the group instead).
 *
 * Here the frozen model runs as tome's reference forward, chunk by chunk over
 * a growing cache, the answer span (with the last prompt token, whose query
 * predicts the first answer token) as the final chunk: the oracle for
 * graph_targets.ts (what `tome train locret` runs, on a feature graph) and
 * what `tome train duo` builds on.
 */
import type { ModelConfig } from "../model/config.ts";
import { appendEntries, forward, type Past, type Weights } from "../model/reference.ts";
import type { Sample } from "./samples.ts";

/** Features and targets of one sample. */
export interface Targets {
  /** Prompt tokens scored: 0 … N−1. */
  N: number;
  /** Per layer [N, F], F = (H + 2·Hkv)·d, the [q; k; v] layout the graph concatenates. */
  features: Float32Array[];
  /** Per layer [N, Hkv]: the CIS of each prompt token for each KV head. */
  cis: Float32Array[];
}

/** Width of one layer's feature vector: (H + 2·Hkv)·d. */
export const featureWidth = (c: ModelConfig) => (c.heads + 2 * c.kvHeads) * c.headDim;

/** A reference forward over `ids` after `past`, in original-position mode; `logits` only when asked (the LM head costs S·D·V). */
export function step(c: ModelConfig, w: Weights, ids: number[], start: number, past: Past, logits = false) {
  const cfg = logits ? c : { ...c, vocab: 1 };
  const positions = ids.map((_, i) => start + i);
  return forward(cfg, w, ids, positions, past, "original");
}

/** Appends a forward's new entries to the cache. */
export function grow(c: ModelConfig, past: Past, out: ReturnType<typeof step>, S: number): Past {
  const { kvHeads: K, headDim: d } = c;
  return {
    length: past.length + S,
    layers: out.newKeys.map((k, l) => ({
      keys: appendEntries(past.layers[l]?.keys ?? new Float32Array(0), past.length, k, S, K, d),
      values: appendEntries(past.layers[l]?.values ?? new Float32Array(0), past.length, out.newValues[l], S, K, d),
    })),
  };
}

/** Prefills ids[0, end) in chunks; calls `each` with every chunk's output; returns the cache. */
export function prefill(
  c: ModelConfig,
  w: Weights,
  ids: number[],
  end: number,
  chunk: number,
  each?: (out: ReturnType<typeof step>, start: number, S: number) => void,
): Past {
  let past: Past = { length: 0, layers: [] };
  for (let s = 0; s < end; s += chunk) {
    const S = Math.min(chunk, end - s);
    const out = step(c, w, ids.slice(s, s + S), s, past);
    each?.(out, s, S);
    past = grow(c, past, out, S);
  }
  return past;
}

/** Features and CIS targets of one sample's prompt tokens 0 … answerStart−2. */
export function sampleTargets(c: ModelConfig, w: Weights, sample: Sample, chunk: number): Targets {
  const { heads: H, kvHeads: K, headDim: d, layers } = c;
  const F = featureWidth(c);
  const qStart = sample.answerStart - 1; // the window: the last prompt token's query and the answer's
  const N = qStart;
  const features = Array.from({ length: layers }, () => new Float32Array(N * F));
  const past = prefill(c, w, sample.ids, N, chunk, (out, s, S) => {
    for (let l = 0; l < layers; l++) {
      const { q, k, v } = out.projections[l];
      const f = features[l];
      for (let i = 0; i < S; i++) {
        const o = (s + i) * F;
        f.set(q.subarray(i * H * d, (i + 1) * H * d), o);
        f.set(k.subarray(i * K * d, (i + 1) * K * d), o + H * d);
        f.set(v.subarray(i * K * d, (i + 1) * K * d), o + H * d + K * d);
      }
    }
  });
  const window = sample.ids.slice(qStart, sample.ids.length - 1); // queries that predict answer tokens
  const out = step(c, w, window, qStart, past);
  const S = window.length;
  const T = N + S;
  const g = H / K;
  const cis = out.probs.map((p) => {
    const y = new Float32Array(N * K);
    for (let h = 0; h < H; h++) {
      const kv = Math.floor(h / g);
      for (let s = 0; s < S; s++) {
        const row = (h * S + s) * T;
        for (let t = 0; t < N; t++) if (p[row + t] > y[t * K + kv]) y[t * K + kv] = p[row + t];
      }
    }
    return y;
  });
  return { N, features, cis };
}
