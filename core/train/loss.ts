/**
 * Locret's training loss for one batch of contiguous token segments:
 * SmoothL1(score, CIS) averaged over tokens and KV heads, plus
 * λ · the mean squared difference between adjacent tokens' scores (λ = 0.0025)
 * within each segment.
 */

/** Weight of the adjacent-token smoothness term. */
export const SMOOTHNESS = 0.0025;

/** Loss and its gradient with respect to the scores r [N, K]; segments are `seg` tokens long. */
export function locretLoss(
  r: Float32Array,
  cis: Float32Array,
  N: number,
  K: number,
  seg: number,
  lambda = SMOOTHNESS,
): { loss: number; dr: Float32Array } {
  const dr = new Float32Array(N * K);
  let fit = 0;
  for (let i = 0; i < N * K; i++) {
    const e = r[i] - cis[i];
    const a = Math.abs(e);
    fit += a < 1 ? 0.5 * e * e : a - 0.5;
    dr[i] = (a < 1 ? e : Math.sign(e)) / (N * K);
  }
  let pairs = 0;
  for (let n = 0; n + 1 < N; n++) if ((n + 1) % seg !== 0) pairs++;
  let smooth = 0;
  if (pairs > 0) {
    const c = lambda / (pairs * K);
    for (let n = 0; n + 1 < N; n++) {
      if ((n + 1) % seg === 0) continue;
      for (let k = 0; k < K; k++) {
        const e = r[(n + 1) * K + k] - r[n * K + k];
        smooth += e * e;
        dr[(n + 1) * K + k] += 2 * c * e;
        dr[n * K + k] -= 2 * c * e;
      }
    }
    smooth *= c;
  }
  return { loss: fit / (N * K) + smooth, dr };
}
