import { topK } from "../../kernels/topk.ts";
import type { Protection } from "./policy.ts";

/**
 * The one selection path: of `n` entries scored by `scores`, keep `budget` —
 * the protected sinks (first entries) and recent ones (last entries) always,
 * the rest by top-k of the score — returned as ascending indices, so kept
 * entries stay in their original order.
 */
export function select(scores: Float32Array, n: number, budget: number, protect: Protection): Int32Array {
  if (n <= budget) return Int32Array.from({ length: n }, (_, i) => i);
  const sinks = Math.min(protect.sinks, budget, n);
  const recent = Math.min(protect.recent, budget - sinks, n - sinks);
  const free = budget - sinks - recent;
  const middle = n - sinks - recent;
  const chosen = topK(scores.subarray(sinks, sinks + middle), middle, free);
  const out = new Int32Array(budget);
  let j = 0;
  for (let i = 0; i < sinks; i++) out[j++] = i;
  for (const c of chosen) out[j++] = sinks + c;
  for (let i = n - recent; i < n; i++) out[j++] = i;
  return out;
}
