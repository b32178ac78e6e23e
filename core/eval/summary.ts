/**
 * What the evaluations' trials add up to: per (policy, budget) summaries of
 * needle recall and fidelity, the recall heatmap's cells, and each policy's
 * critical KV footprint. Pure functions over the rows the runs yield.
 */
import type { Budget } from "./options.ts";
import type { FidelityRow } from "./fidelity.ts";
import type { NiahRow } from "./niah.ts";

/** Needle recall and KV footprint per (policy, budget). */
export interface NiahSummary {
  policy: string;
  budget: Budget | null;
  trials: number;
  /** Share of trials answered with the exact code. */
  recall: number;
  /** Mean share of the code's digits answered in place. */
  partial: number;
  footprint: number;
  /** Mean footprint in bytes-time. */
  footprint_bytes: number;
  peak_fraction: number;
  /** The largest KV peak over the trials. */
  kv_peak_bytes: number;
  /** The largest peak of each tier over the trials. */
  kv_high_peak_bytes: number;
  kv_low_peak_bytes: number;
}

/** Needle recall in one heatmap cell: a (policy, budget) at one haystack length and depth. */
export interface NiahCell {
  policy: string;
  budget: Budget | null;
  length: number;
  /** Needle depth in whole percent. */
  depth: number;
  trials: number;
  recall: number;
}

/** KL divergence and top-1 agreement per (policy, budget). */
export interface FidelitySummary {
  policy: string;
  budget: Budget | null;
  trials: number;
  /** Mean KL(full ‖ evicted) in nats. */
  kl: number;
  /** Share of trials whose most likely token agreed with the full cache's at every answer position. */
  top1_agreement: number;
  footprint: number;
  peak_fraction: number;
}

/** Rows grouped by key, groups and rows in the order first seen. */
function groupBy<T>(rows: readonly T[], key: (r: T) => string): T[][] {
  const groups = new Map<string, T[]>();
  for (const r of rows) {
    const k = key(r);
    const g = groups.get(k);
    if (g) g.push(r);
    else groups.set(k, [r]);
  }
  return [...groups.values()];
}

const mean = <T>(g: readonly T[], x: (r: T) => number) => g.reduce((a, r) => a + x(r), 0) / g.length;
const configKey = (r: { policy: string; budget: Budget | null }) => `${r.policy}\u0000${r.budget}`;

/** Recall and footprint per (policy, budget), in the order the runs first yielded them. */
export function summarizeNiah(rows: readonly NiahRow[]): NiahSummary[] {
  return groupBy(rows, configKey).map((g) => ({
    policy: g[0].policy,
    budget: g[0].budget,
    trials: g.length,
    recall: mean(g, (r) => (r.exact ? 1 : 0)),
    partial: mean(g, (r) => r.partial),
    footprint: mean(g, (r) => r.footprint),
    footprint_bytes: mean(g, (r) => r.footprint_bytes),
    peak_fraction: mean(g, (r) => r.peak_fraction),
    kv_peak_bytes: Math.max(...g.map((r) => r.kv_peak_bytes)),
    kv_high_peak_bytes: Math.max(...g.map((r) => r.kv_high_peak_bytes)),
    kv_low_peak_bytes: Math.max(...g.map((r) => r.kv_low_peak_bytes)),
  }));
}

/** Recall per (policy, budget, length, depth in whole percent): the needle heatmap's cells. */
export function niahCells(rows: readonly NiahRow[]): NiahCell[] {
  const depth = (r: NiahRow) => Math.round(100 * r.depth);
  return groupBy(rows, (r) => `${configKey(r)}\u0000${r.length}\u0000${depth(r)}`).map((g) => ({
    policy: g[0].policy,
    budget: g[0].budget,
    length: g[0].length,
    depth: depth(g[0]),
    trials: g.length,
    recall: mean(g, (r) => (r.exact ? 1 : 0)),
  }));
}

/** Mean KL, top-1 agreement and footprint per (policy, budget), in the order first yielded. */
export function summarizeFidelity(rows: readonly FidelityRow[]): FidelitySummary[] {
  return groupBy(rows, configKey).map((g) => ({
    policy: g[0].policy,
    budget: g[0].budget,
    trials: g.length,
    kl: mean(g, (r) => r.kl),
    top1_agreement: mean(g, (r) => (r.top1_agree ? 1 : 0)),
    footprint: mean(g, (r) => r.footprint),
    peak_fraction: mean(g, (r) => r.peak_fraction),
  }));
}

/**
 * Critical KV footprint (arXiv 2506.17121): per policy, the smallest mean
 * footprint at which it keeps ≥ `share` (90%) of the full cache's score; null
 * when no budget reaches it. `bytes`: the footprint in bytes-time.
 */
export function criticalFootprint(
  summary: readonly NiahSummary[],
  fullScore: number,
  share = 0.9,
  bytes = false,
): Map<string, number | null> {
  const out = new Map<string, number | null>();
  for (const s of summary) {
    if (!out.has(s.policy)) out.set(s.policy, null);
    const f = bytes ? s.footprint_bytes : s.footprint;
    if (s.recall >= share * fullScore) {
      const best = out.get(s.policy);
      if (best === null || best === undefined || f < best) out.set(s.policy, f);
    }
  }
  return out;
}
