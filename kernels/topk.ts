/**
 * Indices of the `k` highest of `scores[0..n)`, returned in ascending index
 * order (kept entries stay in their original order). Ties go to the later
 * index (the more recent entry); NaN ranks lowest. Average O(n) (quickselect).
 */
export function topK(scores: ArrayLike<number>, n: number, k: number): Int32Array {
  if (k >= n) return Int32Array.from({ length: n }, (_, i) => i);
  if (k <= 0) return new Int32Array(0);
  const idx = Int32Array.from({ length: n }, (_, i) => i);
  const key = (i: number) => {
    const v = scores[i];
    return v === v ? v : -Infinity; // NaN → −∞
  };
  /** a ranks before b: higher score, or equal score and later index. */
  const before = (a: number, b: number) => {
    const ka = key(a), kb = key(b);
    return ka > kb || (ka === kb && a > b);
  };
  let lo = 0, hi = n - 1;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    // median of three as the pivot
    if (before(idx[mid], idx[lo])) swap(idx, mid, lo);
    if (before(idx[hi], idx[lo])) swap(idx, hi, lo);
    if (before(idx[hi], idx[mid])) swap(idx, hi, mid);
    const pivot = idx[mid];
    let i = lo, j = hi;
    while (i <= j) {
      while (before(idx[i], pivot)) i++;
      while (before(pivot, idx[j])) j--;
      if (i <= j) swap(idx, i++, j--);
    }
    if (k - 1 <= j) hi = j;
    else if (k - 1 >= i) lo = i;
    else break;
  }
  return idx.subarray(0, k).sort();
}

function swap(a: Int32Array, i: number, j: number): void {
  const t = a[i];
  a[i] = a[j];
  a[j] = t;
}
