import { maxPool1d } from "../../kernels/pool.ts";
import { emsMerge } from "./merge/ems.ts";
import { SNAPKV_KERNEL } from "./snapkv.ts";
import type { Policy, ScoreView } from "./policy.ts";

/** Weight of the global part of EMS's score (the local part weighs 1 − α). */
export const EMS_ALPHA = 0.5;

/**
 * EMS's Global-Local score (Li et al., arXiv 2412.08521), one KV head:
 *   global_i = attention mass entry i received from every query so far ÷ the
 *              queries that could see it (H2O's score: the division undoes the
 *              causal mask's bias toward early entries),
 *   local_i  = the observation window's attention mass on i, max-pooled over
 *              7 neighbours (SnapKV's score; the window is the question patch
 *              when the question is known; its bias is toward recent entries),
 *   score_i  = α·global_i/Σ global + (1 − α)·local_i/Σ local, α = 0.5.
 * Each part is normalized to a distribution over the head's entries so that
 * neither dominates by scale. The paper mixes the two; the normalization,
 * α = 0.5 and the pooling are tome's choices where its text was not at hand —
 * the pooling because without it the window keeps only the entries a query
 * matches, not the ones after them that an answer copies (on the retrieval
 * model at 8K, budget 48: 0% recall unpooled, 60% pooled; budget 256: 0% and
 * 100%). A part that sums to 0 contributes 0.
 */
export function emsScore(v: ScoreView, alpha = EMS_ALPHA): Float32Array {
  const local = maxPool1d(v.stat("window"), v.n, SNAPKV_KERNEL);
  const global = new Float64Array(v.n);
  let gs = 0, ls = 0;
  for (let i = 0; i < v.n; i++) {
    global[i] = v.seen[i] > 0 ? v.accumulated[i] / v.seen[i] : 0;
    gs += global[i];
    ls += local[i];
  }
  const out = new Float32Array(v.n);
  for (let i = 0; i < v.n; i++) {
    out[i] = (gs > 0 ? (alpha * global[i]) / gs : 0) + (ls > 0 ? ((1 - alpha) * local[i]) / ls : 0);
  }
  return out;
}

/**
 * EMS (arXiv 2412.08521): evict by the Global-Local score, then merge — the
 * policy brings its own merger (`merge/ems.ts`), which `--merge` replaces
 * (`--merge drop` evicts by the score alone).
 */
export const ems: Policy = {
  name: "ems",
  summary:
    "global (H2O) and local (SnapKV) attention mixed; the best evicted entries merge into similar kept ones (EMS, arXiv 2412.08521)",
  needs: ["all", "window"],
  attention: true,
  protect: (_budget, w, questionPatch) => ({ sinks: 0, recent: questionPatch ? 0 : w }),
  score: (v) => emsScore(v),
  merger: () => emsMerge(),
};
