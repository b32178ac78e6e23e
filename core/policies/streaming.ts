import type { Policy } from "./policy.ts";

/** Number of attention sinks StreamingLLM keeps. */
export const STREAMING_SINKS = 4;

/**
 * StreamingLLM (Xiao et al., arXiv 2309.17453): keep the first s = 4 entries
 * (attention sinks) and the most recent B − s; nothing is scored.
 */
export const streaming: Policy = {
  name: "streaming",
  summary: "keep the first 4 entries (attention sinks) and the most recent ones (StreamingLLM, arXiv 2309.17453)",
  needs: [],
  attention: false,
  protect: (budget) => ({ sinks: Math.min(STREAMING_SINKS, budget), recent: Math.max(0, budget - STREAMING_SINKS) }),
  score: (v) => new Float32Array(v.n),
};
