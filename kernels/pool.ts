/**
 * 1-D pooling with a centred window of `kernel` (odd) and "same" output
 * length, as SnapKV smooths attention scores (the window shrinks at the ends).
 */
export function maxPool1d(x: ArrayLike<number>, n: number, kernel: number, out = new Float32Array(n)): Float32Array {
  const r = kernel >> 1;
  for (let i = 0; i < n; i++) {
    let m = -Infinity;
    const end = Math.min(n - 1, i + r);
    for (let j = Math.max(0, i - r); j <= end; j++) if (x[j] > m) m = x[j];
    out[i] = m;
  }
  return out;
}

/** Average pooling, centred, "same" length; the divisor counts only positions inside the input. */
export function avgPool1d(x: ArrayLike<number>, n: number, kernel: number, out = new Float32Array(n)): Float32Array {
  const r = kernel >> 1;
  for (let i = 0; i < n; i++) {
    let s = 0;
    const lo = Math.max(0, i - r), hi = Math.min(n - 1, i + r);
    for (let j = lo; j <= hi; j++) s += x[j];
    out[i] = s / (hi - lo + 1);
  }
  return out;
}
