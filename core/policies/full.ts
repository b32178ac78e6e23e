import type { Policy } from "./policy.ts";

/** The baseline: nothing is evicted; memory grows with the input. */
export const full: Policy = {
  name: "full",
  summary: "keep every entry (the full cache, the baseline every other policy is measured against)",
  needs: [],
  attention: false,
  keepsAll: true,
  protect: () => ({ sinks: 0, recent: 0 }),
  score: (v) => new Float32Array(v.n),
};
