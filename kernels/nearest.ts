/**
 * The exact half of a fast nearest-by-cosine search. A float32 matrix product
 * of unit-length rows (onnxruntime's, `core/model/onnx/similarity.ts`) gives
 * every query's two best candidates approximately; this settles each query
 * exactly as the brute-force search would (`nearestByCosine`, `nearestCentre`:
 * candidates in order, the first strictly larger similarity wins, so the
 * first of equals on ties), recomputing the winner's similarity with the
 * merger's own exact formula, and scanning every candidate exactly where the
 * approximate best two are closer than the error bound allows to tell apart.
 */

/** The unit roundoff of float32. */
const U = 2 ** -24;

/**
 * The rows of `x` ([n, d]) scaled to unit length as f32 (zero rows stay
 * zero): x_t · (1/√Σx²), the scaling `nearestCentre` compares by.
 */
export function unitRows(x: Float32Array, n: number, d: number): Float32Array {
  const out = new Float32Array(n * d);
  for (let i = 0, o = 0; i < n; i++, o += d) {
    let s = 0;
    for (let t = 0; t < d; t++) s += x[o + t] * x[o + t];
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let t = 0; t < d; t++) out[o + t] = x[o + t] * inv;
  }
  return out;
}

/** Σ_t a[ao+t]·b[bo+t] over t < d, in four interleaved partial sums (`nearestCentre`'s order, so its exact value). */
export function dot4(a: Float32Array, ao: number, b: Float32Array, bo: number, d: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, t = 0;
  for (; t + 3 < d; t += 4) {
    s0 += a[ao + t] * b[bo + t];
    s1 += a[ao + t + 1] * b[bo + t + 1];
    s2 += a[ao + t + 2] * b[bo + t + 2];
    s3 += a[ao + t + 3] * b[bo + t + 3];
  }
  for (; t < d; t++) s0 += a[ao + t] * b[bo + t];
  return s0 + s1 + s2 + s3;
}

/**
 * How far apart the approximate best and second best must be for the best to
 * be the exact one. A float32 dot product of length d, in any summation
 * order, is within γ_d·Σ|a_t·b_t| ≤ (d·u/(1−d·u))·‖a‖‖b‖ of the exact one
 * (u = 2⁻²⁴); unit rows rounded to f32 have norm ≤ 1 + u, and the exact
 * formulas the mergers use (`cosine` over f32 norms, `dot4` over the same unit
 * rows) differ from the exact dot product of the rounded unit rows by at most
 * 4u more. So |approx − exact| ≤ ε = (d + 4)·u (to first order); the best
 * wins outright when it leads the second by more than 2ε. The margin doubles
 * that again, for safety: only queries with a near-tie cost a full scan.
 */
export function searchMargin(d: number): number {
  return 4 * (d + 4) * U;
}

/**
 * One KV head's nearest search, as a merger asks for it: for each row in
 * `queries`, the row in `candidates` (both indices into the head's n rows)
 * most similar by `exact(i, j)`, the merger's own cosine; `unit` holds the n
 * rows at unit length ([n, d], from {@link unitRows}), which `exact` must
 * agree with to within {@link searchMargin}'s bound.
 */
export interface NearestSearch {
  queries: Int32Array;
  candidates: Int32Array;
  unit: Float32Array;
  exact: (i: number, j: number) => number;
}

/** Each query's nearest candidate and its exact similarity (−1 and −Infinity without candidates). */
export interface Nearest {
  index: Int32Array;
  similarity: Float32Array;
}

/**
 * Settles each query's nearest candidate exactly from the approximate top two.
 * `best[q]` is the rank in `candidates` of query q's approximate best,
 * `first[q]`/`second[q]` the approximate similarities of the best two (second
 * ignored with one candidate); `exact(i, j)` is the merger's exact similarity
 * of rows i and j. Where first − second > `margin` the best is taken (its
 * similarity recomputed exactly); otherwise (a near-tie, or NaN) every
 * candidate is scored exactly in order and the first strictly larger one
 * wins, as the brute-force search does.
 */
export function settleNearest(
  queries: Int32Array,
  candidates: Int32Array,
  best: Int32Array,
  first: Float32Array,
  second: Float32Array,
  margin: number,
  exact: (i: number, j: number) => number,
): Nearest {
  const index = new Int32Array(queries.length).fill(-1);
  const similarity = new Float32Array(queries.length).fill(-Infinity);
  const C = candidates.length;
  if (C === 0) return { index, similarity };
  for (let q = 0; q < queries.length; q++) {
    const i = queries[q];
    if (C === 1 || first[q] - second[q] > margin) {
      const j = candidates[best[q]];
      const s = exact(i, j);
      // an exact similarity that is not a number loses to −Infinity in the brute-force search
      if (s > -Infinity) index[q] = j, similarity[q] = s;
      continue;
    }
    let top = -Infinity, at = -1;
    for (let c = 0; c < C; c++) {
      const s = exact(i, candidates[c]);
      if (s > top) top = s, at = candidates[c];
    }
    index[q] = at;
    similarity[q] = top;
  }
  return { index, similarity };
}
