/**
 * Key-channel kernels for ThinK (arXiv 2407.21018): the per-channel energy of
 * a head's keys, the channel score from the query and key energies, the top
 * channels by a score, and moving one row between its
 * full width d and the k kept channels. Rows are f32 values or f16 bit
 * patterns; gather and scatter copy elements as they are (no conversion).
 */
import { fromF16Bits } from "./fp16.ts";

/** A key row's storage: f32 values or f16 bit patterns. */
export type KeyArray = Float32Array | Uint16Array;

/** Adds Σ_rows x[r, i]² of `n` rows of width `d` starting at row `row0` of `src` to `out[i]`. */
export function addChannelEnergy(out: Float64Array, src: KeyArray, row0: number, n: number, d: number): void {
  const f32 = src instanceof Float32Array;
  for (let r = 0; r < n; r++) {
    const at = (row0 + r) * d;
    for (let i = 0; i < d; i++) {
      const x = f32 ? src[at + i] : fromF16Bits(src[at + i]);
      out[i] += x * x;
    }
  }
}

/**
 * ThinK's channel scores ‖Q[:, i]·K[:, i]ᵀ‖_F = ‖Q[:, i]‖·‖K[:, i]‖ from the squared factors: `query[from + i]`
 * (Σ q[:, i]²) and `keys[i]` (Σ k[:, i]²), i < d.
 */
export function outerNormScores(
  query: ArrayLike<number>,
  from: number,
  keys: ArrayLike<number>,
  d: number,
): Float64Array {
  const out = new Float64Array(d);
  for (let i = 0; i < d; i++) out[i] = Math.sqrt(query[from + i]) * Math.sqrt(keys[i]);
  return out;
}

/** Indices of the `k` largest scores (ties: the lower index), ascending. */
export function topChannels(score: ArrayLike<number>, k: number): Int32Array {
  const idx = Array.from({ length: score.length }, (_, i) => i);
  idx.sort((a, b) => score[b] - score[a] || a - b);
  return Int32Array.from(idx.slice(0, k)).sort();
}

/** Copies channels `channels` of the d-wide row at `src[from…]` to the k-wide row at `dst[to…]`. */
export function gatherChannels(dst: KeyArray, to: number, src: KeyArray, from: number, channels: Int32Array): void {
  for (let j = 0; j < channels.length; j++) dst[to + j] = src[from + channels[j]];
}

/** Writes the k-wide row at `src[from…]` into the d-wide row at `dst[to…]`: kept channels set, the rest 0. */
export function scatterChannels(
  dst: KeyArray,
  to: number,
  src: KeyArray,
  from: number,
  channels: Int32Array,
  d: number,
): void {
  dst.fill(0, to, to + d); // +0 in f32 and in f16 bits alike
  for (let j = 0; j < channels.length; j++) dst[to + channels[j]] = src[from + j];
}

/**
 * Scatters `n` k-wide rows (`src` from row `from`) into d-wide rows of `dst` from row `to`, at `channels`;
 * the other channels of `dst` are left as they are (0 in a new buffer).
 */
export function scatterRows(
  dst: KeyArray,
  to: number,
  src: KeyArray,
  from: number,
  n: number,
  channels: Int32Array,
  d: number,
): void {
  const k = channels.length;
  for (let r = 0; r < n; r++) {
    const o = (to + r) * d, i = (from + r) * k;
    for (let j = 0; j < k; j++) dst[o + channels[j]] = src[i + j];
  }
}
