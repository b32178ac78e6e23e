import type { Policy } from "./policy.ts";
import { snapkv } from "./snapkv.ts";

/** PyramidKV's ratio of the first layer's budget to the last's is shaped by β. */
export const PYRAMID_BETA = 20;

/**
 * PyramidKV (Cai et al., arXiv 2406.02069): SnapKV's score with budgets that
 * fall linearly with depth — the last layer gets B/β, the first 2B − B/β, the
 * mean stays B.
 */
export const pyramidkv: Policy = {
  ...snapkv,
  name: "pyramidkv",
  summary: "SnapKV's score, budgets falling linearly with depth from 2B − B/20 to B/20 (PyramidKV, arXiv 2406.02069)",
  budgets(budget, layers) {
    if (layers === 1) return [budget];
    const top = budget / PYRAMID_BETA;
    const bottom = 2 * budget - top;
    const raw = Array.from({ length: layers }, (_, l) => bottom - ((bottom - top) * l) / (layers - 1));
    // integers with the same total as layers × budget
    const out = raw.map(Math.floor);
    let rest = budget * layers - out.reduce((a, b) => a + b, 0);
    for (let l = 0; rest > 0; l = (l + 1) % layers, rest--) out[l]++;
    return out.map((b) => Math.max(1, b));
  },
};
