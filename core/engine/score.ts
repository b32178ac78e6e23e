/**
 * Teacher forcing over a read document: feeds tokens after it (no eviction)
 * through a graph with logits for every position, and hands each row to the
 * caller — what perplexity and fidelity evaluation need.
 */
import type { ModelSession } from "../model/session.ts";
import type { Sequence } from "./sequence.ts";

/**
 * Feeds `ids` after the sequence's document in runs of `chunk`, appending
 * their K/V. Row i of the logits (predicting ids[i + 1]) goes to `onRow`.
 * `scorer` must be a graph of the same model with `logits: "all"`.
 */
export async function teacherForce(
  seq: Sequence,
  scorer: ModelSession,
  ids: number[],
  chunk: number,
  onRow: (row: Float32Array, i: number) => void,
): Promise<void> {
  if (scorer.graph.logits !== "all") throw new Error("teacher forcing needs a graph with logits for every position");
  const V = scorer.config.vocab;
  seq.reserve(ids.length);
  for (let at = 0; at < ids.length; at += chunk) {
    const part = ids.slice(at, at + chunk);
    const r = await seq.append(part, { logits: true, session: scorer });
    for (let i = 0; i < part.length; i++) onRow(r.logits!.subarray(i * V, (i + 1) * V), at + i);
  }
}

/** log p(target) under the softmax of `logits`. */
export function logProb(logits: Float32Array, target: number): number {
  let max = -Infinity;
  for (const x of logits) if (x > max) max = x;
  let sum = 0;
  for (const x of logits) sum += Math.exp(x - max);
  return logits[target] - max - Math.log(sum);
}

/** KL(p ‖ q) of the softmax distributions of two logit rows, in nats. */
export function klDivergence(p: Float32Array, q: Float32Array): number {
  const lse = (x: Float32Array) => {
    let m = -Infinity;
    for (const v of x) if (v > m) m = v;
    let s = 0;
    for (const v of x) s += Math.exp(v - m);
    return m + Math.log(s);
  };
  const lp = lse(p), lq = lse(q);
  let kl = 0;
  for (let i = 0; i < p.length; i++) {
    const a = p[i] - lp;
    kl += Math.exp(a) * (a - (q[i] - lq));
  }
  return Math.max(0, kl);
}
