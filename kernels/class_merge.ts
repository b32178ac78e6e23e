/**
 * EMS's class-centre merge (arXiv 2412.08521) over f32 rows of length d: the
 * members of a class are folded into their centre, values by their plain
 * mean, keys by their mean direction rescaled to their mean norm — averaging
 * keys that point apart shortens the plain mean, which would lower every
 * query's logit on the merged entry; the norm is kept separately instead.
 */

/**
 * Folds rows `members` of `keys`/`values` into row `centre`, which already
 * stands for `m` entries (m ≥ 1; an unmerged entry stands for 1):
 *   v_c ← (m·v_c + Σ v_e) / (m + |E|)
 *   k_c ← ν·u/‖u‖ with u = m·k_c/‖k_c‖ + Σ k_e/‖k_e‖ and ν = (m·‖k_c‖ + Σ ‖k_e‖) / (m + |E|)
 * (a zero key adds nothing to u; if u is zero the keys' plain mean is used).
 * Returns the count the centre stands for after the merge, m + |E|.
 */
export function mergeClass(
  keys: Float32Array,
  values: Float32Array,
  d: number,
  centre: number,
  m: number,
  members: ArrayLike<number>,
): number {
  const total = m + members.length;
  const c = centre * d;
  const u = new Float64Array(d), kMean = new Float64Array(d), vMean = new Float64Array(d);
  const norm = (row: number) => {
    let s = 0;
    for (let t = row * d, e = t + d; t < e; t++) s += keys[t] * keys[t];
    return Math.sqrt(s);
  };
  let normSum = 0;
  const add = (row: number, weight: number) => {
    const nr = norm(row);
    normSum += weight * nr;
    const o = row * d;
    for (let t = 0; t < d; t++) {
      if (nr > 0) u[t] += (weight * keys[o + t]) / nr;
      kMean[t] += weight * keys[o + t];
      vMean[t] += weight * values[o + t];
    }
  };
  add(centre, m);
  for (let j = 0; j < members.length; j++) add(members[j], 1);
  let un = 0;
  for (let t = 0; t < d; t++) un += u[t] * u[t];
  un = Math.sqrt(un);
  const nu = normSum / total;
  for (let t = 0; t < d; t++) {
    keys[c + t] = un > 0 ? (nu * u[t]) / un : kMean[t] / total;
    values[c + t] = vMean[t] / total;
  }
  return total;
}

/**
 * For each row in `queries`, the row of `centres` with the largest cosine
 * similarity to it (the first on ties) and that similarity; −1 and −Infinity
 * without centres. Cosine is 0 against a zero row. The centres are normalized
 * once into one contiguous block, so the inner loop is a plain dot product.
 */
export function nearestCentre(
  x: Float32Array,
  d: number,
  queries: Int32Array,
  centres: Int32Array,
): { index: Int32Array; similarity: Float32Array } {
  const C = centres.length;
  const unit = new Float32Array(C * d);
  for (let j = 0; j < C; j++) {
    const o = centres[j] * d;
    let s = 0;
    for (let t = 0; t < d; t++) s += x[o + t] * x[o + t];
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let t = 0; t < d; t++) unit[j * d + t] = x[o + t] * inv;
  }
  const index = new Int32Array(queries.length).fill(-1);
  const similarity = new Float32Array(queries.length).fill(-Infinity);
  const q = new Float32Array(d);
  for (let a = 0; a < queries.length; a++) {
    const o = queries[a] * d;
    let s = 0;
    for (let t = 0; t < d; t++) s += x[o + t] * x[o + t];
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let t = 0; t < d; t++) q[t] = x[o + t] * inv;
    let best = -Infinity, at = -1;
    for (let j = 0, u = 0; j < C; j++, u += d) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0, t = 0;
      for (; t + 3 < d; t += 4) {
        s0 += q[t] * unit[u + t];
        s1 += q[t + 1] * unit[u + t + 1];
        s2 += q[t + 2] * unit[u + t + 2];
        s3 += q[t + 3] * unit[u + t + 3];
      }
      for (; t < d; t++) s0 += q[t] * unit[u + t];
      const c = s0 + s1 + s2 + s3;
      if (c > best) best = c, at = centres[j];
    }
    index[a] = at;
    similarity[a] = best;
  }
  return { index, similarity };
}
