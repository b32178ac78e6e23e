import { TomeError } from "../errors.ts";
import type { Policy } from "./policy.ts";

/** Sinks DuoAttention's streaming heads keep. */
export const DUO_SINKS = 64;

/** Head classification read from a DuoAttention mask file. */
export interface DuoMask {
  /** [layer][kvHead]: true for retrieval heads (full cache). */
  retrieval: boolean[][];
  threshold: number;
}

/**
 * Reads a DuoAttention / PruLong head mask: a TSV with one row per layer and
 * one column per KV head holding the learned gate α (or 0/1). Heads with
 * α above the threshold are retrieval heads. The threshold is given, or set so
 * that a `sparsity` fraction of heads become streaming heads.
 */
export function parseDuoMask(
  text: string,
  layers: number,
  kvHeads: number,
  opts: { threshold?: number; sparsity?: number },
  where = "mask",
): DuoMask {
  const rows = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
  const values = rows.map((r) => r.split(/[\t ,]+/).map(Number));
  if (values.length !== layers || values.some((r) => r.length !== kvHeads || r.some((v) => !Number.isFinite(v)))) {
    throw new TomeError(
      "usage",
      `${where}: expected ${layers} rows of ${kvHeads} numbers (layers × KV heads), got ${values.length} rows`,
    );
  }
  let threshold = opts.threshold;
  if (threshold === undefined) {
    const sparsity = opts.sparsity ?? 0.5;
    if (!(sparsity >= 0 && sparsity <= 1)) throw new TomeError("usage", `${where}: sparsity must be in [0, 1]`);
    const sorted = values.flat().sort((a, b) => a - b);
    const streaming = Math.round(sparsity * sorted.length);
    threshold = streaming === 0 ? -Infinity : sorted[streaming - 1];
  }
  return { retrieval: values.map((r) => r.map((v) => v > threshold!)), threshold };
}

/**
 * DuoAttention (Xiao et al., arXiv 2410.10819) / PruLong (arXiv 2506.17121):
 * retrieval heads keep every entry; streaming heads keep the first 64 (sinks)
 * and the most recent up to the budget.
 */
export function duo(mask: DuoMask): Policy {
  return {
    name: "duo",
    summary:
      "retrieval heads keep everything, streaming heads keep 64 sinks + recent, from a head mask (DuoAttention, arXiv 2410.10819)",
    needs: [],
    attention: false,
    protect: (budget) => ({ sinks: Math.min(DUO_SINKS, budget), recent: Math.max(0, budget - DUO_SINKS) }),
    score: (v) => new Float32Array(v.n),
    headBudget: (layer, head, budget) => (mask.retrieval[layer][head] ? Infinity : budget),
  };
}
