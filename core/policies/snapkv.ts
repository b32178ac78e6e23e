import { maxPool1d } from "../../kernels/pool.ts";
import type { Policy } from "./policy.ts";

/** SnapKV's pooling kernel. */
export const SNAPKV_KERNEL = 7;

/**
 * SnapKV (Li et al., arXiv 2404.14469): score_i = maxpool₇(Σ over the
 * observation-window queries of the softmax mass on entry i), summed over the
 * KV head's query group. The window is the question patch when the question is
 * known, else the chunk's last w entries, which are then kept.
 */
export const snapkv: Policy = {
  name: "snapkv",
  summary: "window queries' attention mass on each entry, max-pooled over 7 neighbours (SnapKV, arXiv 2404.14469)",
  needs: ["window"],
  attention: true,
  protect: (_budget, w, questionPatch) => ({ sinks: 0, recent: questionPatch ? 0 : w }),
  score: (v) => maxPool1d(v.stat("window"), v.n, SNAPKV_KERNEL),
};
