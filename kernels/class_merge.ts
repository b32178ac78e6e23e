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
