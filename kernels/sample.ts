/** How the next token is drawn from the logits. */
export interface SamplingOptions {
  /** 0 means greedy (argmax). */
  temperature: number;
  /** Keep only the k most likely tokens (0: all). */
  topK: number;
  /** Keep the smallest set of most likely tokens whose probability reaches p (1: all). */
  topP: number;
  /** > 1 discourages tokens already in `history` (CTRL-style: positive logits divided, negative multiplied). */
  repetitionPenalty: number;
}

/** The index of the largest value (the lowest index on ties). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

/**
 * Draws a token id from `logits` (left unchanged): repetition penalty over
 * `history`, then greedy, or temperature → top-k → top-p → a draw with `random`.
 */
export function sample(
  logits: Float32Array,
  opts: SamplingOptions,
  history: ArrayLike<number>,
  random: () => number,
): number {
  let x = logits;
  if (opts.repetitionPenalty !== 1 && history.length > 0) {
    x = logits.slice();
    const seen = new Set(Array.from(history));
    for (const id of seen) {
      if (id < 0 || id >= x.length) continue;
      x[id] = x[id] > 0 ? x[id] / opts.repetitionPenalty : x[id] * opts.repetitionPenalty;
    }
  }
  if (opts.temperature <= 0) return argmax(x);
  const n = x.length;
  let order = Int32Array.from({ length: n }, (_, i) => i).sort((a, b) => x[b] - x[a] || a - b);
  if (opts.topK > 0 && opts.topK < n) order = order.subarray(0, opts.topK);
  const max = x[order[0]];
  const p = new Float64Array(order.length);
  let sum = 0;
  for (let i = 0; i < order.length; i++) sum += p[i] = Math.exp((x[order[i]] - max) / opts.temperature);
  let keep = order.length;
  if (opts.topP < 1) {
    let acc = 0;
    for (let i = 0; i < order.length; i++) {
      acc += p[i] / sum;
      if (acc >= opts.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  let total = 0;
  for (let i = 0; i < keep; i++) total += p[i];
  let r = random() * total;
  for (let i = 0; i < keep; i++) {
    r -= p[i];
    if (r < 0) return order[i];
  }
  return order[keep - 1];
}
