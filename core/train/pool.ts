/**
 * The training set Locret's heads see, in bounded memory: contiguous segments
 * of prompt tokens (features and CIS targets) cut from each sample as it is
 * made — around the tokens with the highest CIS of every KV head, and at
 * random places — so a long sample costs only its segments, and the rare
 * important tokens are not drowned by the many unimportant ones. Each
 * layer's pool is a reservoir of a fixed number of segments (`poolCapacity`),
 * so the samples stream through in bounded memory.
 */
import type { Targets } from "./targets.ts";

/** One layer's segments: features [count·seg, F] and targets [count·seg, K]; `seen` counts every segment offered. */
export interface LayerPool {
  x: Float32Array[];
  y: Float32Array[];
  seen: number;
}

/** Empty pools, one a layer. */
export const emptyPools = (layers: number): LayerPool[] =>
  Array.from({ length: layers }, () => ({ x: [], y: [], seen: 0 }));

/** Segments each layer's pool keeps so that all pools together hold at most `poolBytes` (at least 1). */
export function poolCapacity(o: { poolBytes: number; segment: number }, layers: number, F: number, K: number): number {
  return Math.max(1, Math.floor(o.poolBytes / (layers * o.segment * (F + K) * 4)));
}

/**
 * Segment starts of one sample, per layer: around the `top` highest-CIS tokens of each of that layer's heads, plus
 * `random` anywhere (the same for every layer).
 */
export function segmentStarts(
  t: Targets,
  K: number,
  seg: number,
  top: number,
  random: number,
  rnd: () => number,
): number[][] {
  if (t.N < seg) return t.cis.map(() => []);
  const clamp = (s: number) => Math.max(0, Math.min(t.N - seg, s));
  const anywhere = Array.from({ length: random }, () => clamp(Math.floor(rnd() * t.N)));
  return t.cis.map((y) => {
    const starts = new Set<number>(anywhere);
    for (let k = 0; k < K; k++) {
      const order = Array.from({ length: t.N }, (_, i) => i).sort((a, b) => y[b * K + k] - y[a * K + k]);
      for (const i of order.slice(0, top)) starts.add(clamp(i - Math.floor(rnd() * seg)));
    }
    return [...starts].sort((a, b) => a - b);
  });
}

/**
 * Offers the segments at `starts[l]` of every layer to its pool: a reservoir of at most `capacity` segments, each
 * of all offered so far kept with equal probability (Vitter's algorithm R), so memory is bounded whatever the number
 * of samples.
 */
export function addSegments(
  pools: LayerPool[],
  t: Targets,
  starts: number[][],
  seg: number,
  F: number,
  K: number,
  capacity = Infinity,
  rnd: () => number = Math.random,
) {
  for (let l = 0; l < pools.length; l++) {
    const pool = pools[l];
    for (const s of starts[l]) {
      const slot = pool.x.length < capacity ? pool.x.length : Math.floor(rnd() * (pool.seen + 1));
      pool.seen++;
      if (slot >= capacity) continue;
      pool.x[slot] = t.features[l].slice(s * F, (s + seg) * F);
      pool.y[slot] = t.cis[l].slice(s * K, (s + seg) * K);
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
