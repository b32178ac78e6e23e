import type { Policy } from "./policy.ts";

/**
 * CORM (Dai et al., arXiv 2404.15949): score_i = the largest attention any of
 * the recent w queries pays to entry i; the recent window is kept.
 */
export const corm: Policy = {
  name: "corm",
  summary: "max attention from any recent window query; keep the window (CORM, arXiv 2404.15949)",
  needs: ["max"],
  attention: true,
  protect: (_budget, w, questionPatch) => ({ sinks: 0, recent: questionPatch ? 0 : w }),
  score: (v) => v.stat("max").slice(0, v.n),
};
