/**
 * The numeric loops of KV merging over rows of length d held as f32: gathering
 * cached rows (f32 or f16 bit patterns) into f32, cosine similarity, the
 * nearest row by cosine, squared distance, and the running weighted average
 * that folds one row into another.
 */
import { fromF16Bits, toF16Bits } from "./fp16.ts";

/** Rows stored as f32 values or as float16 bit patterns. */
export type Rows = Float32Array | Uint16Array;

/** Copies `count` rows of `src` from row `from` into `out` from row `at`, as f32. */
export function gatherRows(src: Rows, from: number, count: number, d: number, out: Float32Array, at: number): void {
  const s = from * d, o = at * d, len = count * d;
  if (src instanceof Float32Array) out.set(src.subarray(s, s + len), o);
  else for (let i = 0; i < len; i++) out[o + i] = fromF16Bits(src[s + i]);
}

/** Writes f32 row `row` of `x` to row `to` of `dst` (rounded to float16 when `dst` holds bit patterns). */
export function scatterRow(x: Float32Array, row: number, d: number, dst: Rows, to: number): void {
  const s = row * d, o = to * d;
  if (dst instanceof Float32Array) dst.set(x.subarray(s, s + d), o);
  else for (let i = 0; i < d; i++) dst[o + i] = toF16Bits(x[s + i]);
}

/** ‖x_i‖₂ of each of the n rows. */
export function rowNorms(x: Float32Array, n: number, d: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let k = i * d, e = k + d; k < e; k++) s += x[k] * x[k];
    out[i] = Math.sqrt(s);
  }
  return out;
}

/** cos(x_i, x_j) given the rows' norms (0 when either row is zero). */
export function cosine(x: Float32Array, d: number, norms: Float32Array, i: number, j: number): number {
  const den = norms[i] * norms[j];
  if (den === 0) return 0;
  let s = 0;
  for (let a = i * d, b = j * d, e = a + d; a < e; a++, b++) s += x[a] * x[b];
  return s / den;
}

/**
 * For each row in `queries`, the row of `candidates` with the largest cosine
 * similarity (the first on ties) and that similarity; −1 and −Infinity when
 * there are no candidates.
 */
export function nearestByCosine(
  x: Float32Array,
  d: number,
  norms: Float32Array,
  queries: Int32Array,
  candidates: Int32Array,
): { index: Int32Array; similarity: Float32Array } {
  const index = new Int32Array(queries.length).fill(-1);
  const similarity = new Float32Array(queries.length).fill(-Infinity);
  for (let q = 0; q < queries.length; q++) {
    const i = queries[q];
    let best = -Infinity, at = -1;
    for (const j of candidates) {
      const s = cosine(x, d, norms, i, j);
      if (s > best) best = s, at = j;
    }
    index[q] = at;
    similarity[q] = best;
  }
  return { index, similarity };
}

/** ‖x_i − x_j‖₂². */
export function squaredDistance(x: Float32Array, d: number, i: number, j: number): number {
  let s = 0;
  for (let a = i * d, b = j * d, e = a + d; a < e; a++, b++) {
    const t = x[a] - x[b];
    s += t * t;
  }
  return s;
}

/**
 * Folds row `source` into row `target` as a running weighted average:
 * x_t ← (w_t·x_t + w_s·x_s) / (w_t + w_s), where w_t is the weight the target
 * already stands for. Folding several sources one after another gives their
 * joint weighted average. Returns the target's new weight w_t + w_s.
 */
export function foldRow(x: Float32Array, d: number, target: number, wt: number, source: number, ws: number): number {
  const w = wt + ws;
  const a = wt / w, b = ws / w;
  for (let t = target * d, s = source * d, e = t + d; t < e; t++, s++) x[t] = a * x[t] + b * x[s];
  return w;
}
