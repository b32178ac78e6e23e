import type { Policy } from "./policy.ts";

/** Recent entries key-norm eviction always keeps. */
export const KNORM_RECENT = 64;

/**
 * Key-norm (Devoto et al., arXiv 2406.11430): score_i = −‖k_i‖₂ — keys with a
 * small norm draw attention — keeping the last 64 entries.
 */
export const knorm: Policy = {
  name: "knorm",
  summary: "score −‖k‖₂, low-norm keys draw attention; keep the last 64 (arXiv 2406.11430)",
  needs: [],
  attention: false,
  protect: (budget) => ({ sinks: 0, recent: Math.min(KNORM_RECENT, budget) }),
  score: (v) => v.keyNorms().map((x) => -x),
};
