/**
 * The training set Locret's heads see, in bounded memory: contiguous segments
 * of prompt tokens (features and CIS targets) cut from each sample as it is
 * made — around the tokens with the highest CIS of every KV head, and at
 * random places — so a long sample costs only its segments, and the rare
 * important tokens are not drowned by the many unimportant ones.
 */
import type { Targets } from "./targets.ts";

/** One layer's segments: features [count·seg, F] and targets [count·seg, K], appended. */
export interface LayerPool {
  x: Float32Array[];
  y: Float32Array[];
}

/** Segment starts of one sample: around the `top` highest-CIS tokens of each layer and head, plus `random` anywhere. */
export function segmentStarts(t: Targets, K: number, seg: number, top: number, random: number, rnd: () => number) {
  if (t.N < seg) return [];
  const starts = new Set<number>();
  const clamp = (s: number) => Math.max(0, Math.min(t.N - seg, s));
  for (const y of t.cis) {
    for (let k = 0; k < K; k++) {
      const order = Array.from({ length: t.N }, (_, i) => i).sort((a, b) => y[b * K + k] - y[a * K + k]);
      for (const i of order.slice(0, top)) starts.add(clamp(i - Math.floor(rnd() * seg)));
    }
  }
  for (let i = 0; i < random; i++) starts.add(clamp(Math.floor(rnd() * t.N)));
  return [...starts].sort((a, b) => a - b);
}

/** Adds the segments at `starts` of every layer to the pools. */
export function addSegments(pools: LayerPool[], t: Targets, starts: number[], seg: number, F: number, K: number) {
  for (let l = 0; l < pools.length; l++) {
    for (const s of starts) {
      pools[l].x.push(t.features[l].slice(s * F, (s + seg) * F));
      pools[l].y.push(t.cis[l].slice(s * K, (s + seg) * K));
    }
  }
}

/** Per-feature mean and standard deviation over a pool (σ floored so constant features stay finite). */
export function featureStats(pool: LayerPool, F: number): { mean: Float32Array; std: Float32Array } {
  const sum = new Float64Array(F);
  const sq = new Float64Array(F);
  let n = 0;
  for (const x of pool.x) {
    for (let r = 0; r < x.length / F; r++, n++) {
      for (let i = 0; i < F; i++) {
        const v = x[r * F + i];
        sum[i] += v;
        sq[i] += v * v;
      }
    }
  }
  const mean = new Float32Array(F);
  const std = new Float32Array(F);
  for (let i = 0; i < F; i++) {
    mean[i] = sum[i] / Math.max(1, n);
    std[i] = Math.max(1e-3, Math.sqrt(Math.max(0, sq[i] / Math.max(1, n) - mean[i] * mean[i])));
  }
  return { mean, std };
}
