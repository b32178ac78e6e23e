import type { Policy } from "./policy.ts";

/**
 * H2O (Zhang et al., arXiv 2306.14048): heavy hitters — score_i = attention
 * mass entry i has received from every query so far, divided by the number of
 * queries that could see it — plus the most recent B/2 entries.
 */
export const h2o: Policy = {
  name: "h2o",
  summary:
    "accumulated attention from all queries, normalized by queries that saw the entry; keep recent B/2 (H2O, arXiv 2306.14048)",
  needs: ["all"],
  attention: true,
  protect: (budget) => ({ sinks: 0, recent: Math.floor(budget / 2) }),
  score: (v) => v.accumulated.map((a, i) => (v.seen[i] > 0 ? a / v.seen[i] : 0)),
};
