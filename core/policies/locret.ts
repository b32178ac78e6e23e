import type { Policy } from "./policy.ts";

/** Stabilizers: the most recent entries Locret always keeps. */
export const LOCRET_STABILIZERS = 64;

/**
 * Locret (Huang et al., arXiv 2410.01805): score_i = the retaining heads'
 * importance of token i, computed once from its [q; k; v] when it arrives
 * (the model is loaded with a retaining-heads file); the last 64 entries are
 * kept as stabilizers.
 */
export const locret: Policy = {
  name: "locret",
  summary:
    "importance from trained retaining heads over [q; k; v], given once per token; keep 64 stabilizers (Locret, arXiv 2410.01805)",
  needs: [],
  attention: false,
  retain: true,
  protect: (budget) => ({ sinks: 0, recent: Math.min(LOCRET_STABILIZERS, budget) }),
  score: (v) => v.importance.slice(0, v.n),
};
