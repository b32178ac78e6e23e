/**
 * How a run keeps its KV, described for reports: the scoring policy, the
 * merge that folds evicted entries into kept ones, thin keys (ThinK), and
 * MiKV's low tier — the `method` object of `--json` and the low tier the live
 * display and the report show beside the high tier's bytes.
 */
import type { ResolvedRun } from "../core/mod.ts";

/** The `method` object of `--json` (README: "KV bytes per tier"). */
export interface MethodJson {
  /** The scoring policy (`pyramid:snapkv`, …). */
  policy: string;
  /** The merge method (`d2o`, `kvmerger`, `anchors`, `ems`), `drop` when EMS's own merge was turned off, else null. */
  merge: string | null;
  /** Thin keys: channels each thin key keeps of `head_dim`, and the newest entries per head kept whole. */
  key_channels: { channels: number; head_dim: number; window: number } | null;
  /** MiKV's low tier: its type, quantization group and step/min type, entries per layer and KV head, bytes an entry. */
  low_tier: { tier: string; group: number; params: "f16" | "f32"; budget: number; entry_bytes: number } | null;
}

/** Describes `run` (of a model with head dimension `headDim`) for `--json`. */
export function methodJson(run: ResolvedRun, headDim: number): MethodJson {
  const kc = run.keyChannels, low = run.lowTier;
  return {
    policy: run.policy.name,
    merge: run.merge,
    key_channels: kc ? { channels: kc.channels, head_dim: headDim, window: kc.window } : null,
    low_tier: low
      ? {
        tier: low.tier,
        group: low.spec.group,
        params: low.spec.params === "float32" ? "f32" : "f16",
        budget: low.budget,
        entry_bytes: low.entryBytes,
      }
      : null,
  };
}

/** The low tier as the display shows it: its name, and its budget in bytes over all layers and KV heads. */
export interface LowTierView {
  name: string;
  budgetBytes: number;
}

/** The low tier of `run` for the display (none without one). */
export function lowTierView(run: ResolvedRun, config: { layers: number; kvHeads: number }): LowTierView | undefined {
  const low = run.lowTier;
  return low
    ? { name: low.tier, budgetBytes: low.budget * config.layers * config.kvHeads * low.entryBytes }
    : undefined;
}
