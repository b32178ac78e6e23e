/**
 * What every evaluation shares: the model, the policies and budgets it sweeps,
 * and how the model is opened for them.
 */
import { type LoadedModel, loadModel } from "../mod.ts";
import type { Haystack } from "./haystack.ts";
import type { PolicyOptions } from "../policies/mod.ts";
import type { WeightChoice } from "../model/onnx/decoder.ts";
import type { LowTier } from "../model/onnx/low_tier.ts";
import type { ResolvedRun } from "../engine/resolve.ts";
import { NO_MERGE } from "../policies/merge/mod.ts";
import type { MeterSummary } from "../meter/meter.ts";

/** A swept budget: entries per layer and KV head, or a size (`256KiB`: the whole cache's KV bytes, every tier). */
export type Budget = number | string;

export interface EvalOptions {
  model: string;
  policies: string[];
  /**
   * Budgets, entries per layer and head or sizes (methods compared at equal KV bytes); policies that keep
   * everything run once, whatever the budgets.
   */
  budgets: Budget[];
  chunk: number;
  kvDtype: "float32" | "float16";
  executionProviders?: string[];
  threads?: number;
  policyOptions?: PolicyOptions;
  /** Locret retaining heads, built into every graph the evaluation opens. */
  retainingHeads?: string;
  /** Merge methods swept per policy (`none`: drop-only); default drop-only. */
  merges?: string[];
  /** Thin keys (ThinK): the fraction of key channels kept (default 1: off); `tome eval niah` takes it. */
  keyChannels?: number;
  /** MiKV: keep evicted entries in a low tier (niah; original positions), sized by `lowBudget`. */
  keepEvicted?: LowTier;
  lowBudget?: number | string;
  /** How the graphs store weights (default f32). */
  weights?: WeightChoice;
}

/** The prompt around a needle haystack (the caller's recipe): prefix before the document, suffix after. */
export type NeedleFraming = (model: LoadedModel, h: Haystack) => { prefix: number[]; suffix: number[] };

/** Opens the evaluation's model in a position mode; `allLogits` for teacher-forced scoring. */
export function openModel(
  o: EvalOptions,
  positions: "original" | "compact",
  allLogits = false,
): Promise<LoadedModel> {
  return loadModel(o.model, {
    positions,
    kvDtype: o.kvDtype,
    allLogits,
    threads: o.threads,
    executionProviders: o.executionProviders,
    retainingHeads: o.retainingHeads,
    weights: o.weights,
    ...(o.keepEvicted && positions === "original" ? { lowTier: o.keepEvicted } : {}),
    // thin keys rank channels by ThinK's query factor, a graph output
    ...(o.keyChannels !== undefined && o.keyChannels < 1 ? { queryEnergy: true } : {}),
  });
}

/**
 * A row's method as the tables name it: the policy, then what it does with what it evicts — a merge
 * (`snapkv+d2o`), thin keys (`+think0.5`), a low tier (`+int4`).
 */
export function methodLabel(policy: string, merge: string, run: ResolvedRun, o: EvalOptions): string {
  return (merge === NO_MERGE ? policy : `${policy}+${merge}`) +
    (run.keyChannels ? `+think${o.keyChannels}` : "") +
    (run.lowTier ? `+${run.lowTier.tier}` : "");
}

/** The merges swept for a policy: only its own for a policy that keeps everything. */
export const mergesFor = (keepsAll: boolean | undefined, o: EvalOptions): string[] =>
  keepsAll ? [NO_MERGE] : o.merges ?? [NO_MERGE];

/** The KV columns a niah or ppl row takes from its read's meter: footprints, peak fraction, the peaks (whole, per tier). */
export function kvColumns(s: MeterSummary) {
  return {
    footprint: s.footprint,
    footprint_bytes: s.footprintBytes,
    peak_fraction: s.peakFraction,
    kv_peak_bytes: s.kvPeakBytes,
    kv_high_peak_bytes: s.kvHighPeakBytes,
    kv_low_peak_bytes: s.kvLowPeakBytes,
  };
}
