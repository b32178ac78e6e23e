import type { Policy } from "./policy.ts";

/** PyramidKV's ratio of the first layer's budget to the last's is shaped by β. */
export const PYRAMID_BETA = 20;

/**
 * PyramidKV's schedule (Cai et al., arXiv 2406.02069): budgets fall linearly
 * with depth, from 2B − B/β at the first layer to B/β at the last, so the mean
 * stays B; rounded to integers with the same total L·B, at least 1 each.
 */
export function pyramidBudgets(budget: number, layers: number, beta = PYRAMID_BETA): number[] {
  if (layers === 1) return [budget];
  const top = budget / beta;
  const bottom = 2 * budget - top;
  const raw = Array.from({ length: layers }, (_, l) => bottom - ((bottom - top) * l) / (layers - 1));
  const out = raw.map(Math.floor);
  let rest = budget * layers - out.reduce((a, b) => a + b, 0);
  for (let l = 0; rest > 0; l = (l + 1) % layers, rest--) out[l]++;
  return out.map((b) => Math.max(1, b));
}

/**
 * Any scored policy under PyramidKV's per-layer schedule: the inner policy
 * scores and protects, the schedule gives each layer its budget
 * (`--policy pyramid:snapkv`, `pyramid:h2o`, …), the way kvpress wraps presses.
 */
export function pyramid(inner: Policy): Policy {
  return {
    ...inner,
    name: `pyramid:${inner.name}`,
    summary: `${inner.name} with budgets falling linearly with depth, 2B − B/20 to B/20 (PyramidKV, arXiv 2406.02069)`,
    budgets: (budget, layers) => pyramidBudgets(budget, layers),
  };
}
