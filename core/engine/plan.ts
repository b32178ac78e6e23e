/**
 * The one budget rule. Given a policy and the run's budgets, a plan says how
 * many entries each layer and KV head keeps after a prefill chunk and after a
 * generated token, and which of them are protected (sinks, recent). The
 * engine evicts by it, `tome estimate` predicts by it, and nothing else
 * decides a budget.
 */
import { TomeError } from "../errors.ts";
import type { Merger } from "../policies/merge/mod.ts";
import type { Policy, Protection } from "../policies/policy.ts";
import type { KeyChannels } from "./thin_keys.ts";

/** How one phase (reading, or generating) evicts: per-head entry counts and protection. */
export interface EvictionRule {
  policy: Policy;
  /** Entries layer `l`, KV head `h` keeps (Infinity: all). */
  keep(l: number, h: number): number;
  /** Entries layer `l` always keeps, given the step's observation-window queries and whether the question patch rode along. */
  protect(l: number, windowQueries: number, patch: boolean): Protection;
  /** Folds the entries the selection drops into kept ones instead of dropping them (D2O, KVMerger, anchors). */
  merge?: Merger;
  /**
   * Thin keys (ThinK): after a step all but each head's newest `window` entries keep `channels` key
   * channels (with a question patch, all of them: the patch is the observation window); the window is protected.
   */
  keyChannels?: KeyChannels;
}

/** A run's budgets: per layer while reading, and while generating when the decode budget is set. */
export interface BudgetPlan {
  /** Mean entries per layer and KV head while reading. */
  budget: number;
  /** Entries per layer (their mean is `budget`). */
  layerBudgets: readonly number[];
  /** Reading: after every chunk. */
  prefill: EvictionRule;
  /** Generating: after every generated token, when a decode budget is set and the policy evicts at all. */
  decode?: EvictionRule;
  /** Entries per layer and KV head kept while generating, when `decode` is set. */
  decodeBudget?: number;
}

export interface PlanOptions {
  budget: number;
  /** Entries per layer and KV head kept while generating (default: the cache grows with the answer). */
  decodeBudget?: number;
  /** Overrides of the policy's protected sinks / recent entries. */
  sinks?: number;
  recent?: number;
  /** The run's merger (one per run: it holds per-entry weights). */
  merge?: Merger;
  /** Thin keys: the newest `window` entries of each head stay whole and are protected (at least that many recent). */
  keyChannels?: KeyChannels;
}

/** The budget plan of `policy` for a model of `layers` × `kvHeads`. */
export function planBudgets(policy: Policy, dims: { layers: number }, o: PlanOptions): BudgetPlan {
  const L = dims.layers;
  const layerBudgets = policy.budgets?.(o.budget, L) ?? new Array<number>(L).fill(o.budget);
  const rule = (budgetOf: (l: number) => number): EvictionRule => ({
    policy,
    keep: (l, h) => (policy.keepsAll ? Infinity : policy.headBudget?.(l, h, budgetOf(l)) ?? budgetOf(l)),
    protect: (l, w, patch) => {
      const base = policy.protect(budgetOf(l), w, patch);
      const recent = o.recent ?? base.recent;
      // thin keys never widen again, so the entries that stay whole must stay: the window is protected
      // (with a patch the observation window is the patch, whose entries are not kept: nothing stays whole)
      const whole = o.keyChannels && !patch ? o.keyChannels.window : 0;
      return { sinks: o.sinks ?? base.sinks, recent: Math.max(recent, whole) };
    },
    ...(o.merge && !policy.keepsAll ? { merge: o.merge } : {}),
    ...(o.keyChannels ? { keyChannels: o.keyChannels } : {}),
  });
  const evictsWhileGenerating = o.decodeBudget !== undefined && !policy.keepsAll;
  return {
    budget: o.budget,
    layerBudgets,
    prefill: rule((l) => layerBudgets[l]),
    ...(evictsWhileGenerating ? { decode: rule(() => o.decodeBudget!), decodeBudget: o.decodeBudget } : {}),
  };
}

/**
 * Refuses a plan whose smallest layer budget cannot hold what the policy
 * protects with a `window`-query observation window (usage error).
 */
export function checkPlan(plan: BudgetPlan, window: number, patch: boolean): void {
  const { policy } = plan.prefill;
  if (policy.keepsAll) return;
  for (let l = 0; l < plan.layerBudgets.length; l++) {
    const p = plan.prefill.protect(l, window, patch);
    if (p.sinks + p.recent > plan.layerBudgets[l]) {
      throw new TomeError(
        "usage",
        `budget ${plan.layerBudgets[l]} is smaller than the entries ${policy.name} protects`,
      );
    }
    const d = plan.decode;
    if (d?.keyChannels) {
      const q = d.protect(l, 1, false);
      if (q.sinks + q.recent > plan.decodeBudget!) {
        throw new TomeError(
          "usage",
          `decode budget ${plan.decodeBudget} is smaller than the ${
            q.sinks + q.recent
          } entries kept whole or protected`,
        );
      }
    }
  }
}
