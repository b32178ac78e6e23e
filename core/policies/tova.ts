import type { Policy } from "./policy.ts";

/**
 * TOVA (Oren et al., arXiv 2401.06104): score_i = the last query's attention
 * on entry i, averaged over all heads of the layer; every head keeps the same
 * entries.
 */
export const tova: Policy = {
  name: "tova",
  summary: "the last query's attention, averaged over the layer's heads; one choice per layer (TOVA, arXiv 2401.06104)",
  needs: ["last"],
  attention: true,
  sharedAcrossHeads: true,
  protect: () => ({ sinks: 0, recent: 0 }),
  score(v) {
    const heads = v.layerStat("last");
    const out = new Float32Array(v.n);
    for (const h of heads) for (let i = 0; i < v.n; i++) out[i] += h[i] / heads.length;
    return out;
  },
};
