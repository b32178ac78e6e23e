import type { Policy } from "./policy.ts";

/** The reconstruction request KVzip appends before the chunk's copy. */
export const KVZIP_PROMPT = "\n\nRepeat the previous context exactly.\n";

/**
 * KVzip (Kim et al., arXiv 2505.23416): query-agnostic scoring by context
 * reconstruction. After each chunk the model is fed a "repeat the previous
 * context" request and the chunk again; score_i = the largest attention entry
 * i receives from any reconstruction query (max over queries, then summed over
 * the KV head's query group — the graph's `max` statistic), given once:
 * a chunk's entries are scored by the reconstruction of their own chunk, and
 * keep that score (the store's importance) while later chunks are scored,
 * as KVzip scores chunk by chunk. The reconstruction's own K/V are dropped;
 * the first 4 entries are pinned. It costs about two prefills.
 */
export const kvzip: Policy = {
  name: "kvzip",
  summary: "max attention from a reconstruction of the chunk: query-agnostic (KVzip, arXiv 2505.23416)",
  needs: ["max"],
  attention: true,
  reconstruct: true,
  protect: (budget) => ({ sinks: Math.min(4, budget), recent: 0 }),
  arrive(v) {
    const max = v.stat("max");
    for (let i = v.past; i < v.n; i++) v.importance[i] = max[i];
  },
  score: (v) => v.importance.slice(0, v.n),
};
