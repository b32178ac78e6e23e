/**
 * Elastic Cache's importance-driven merge (arXiv 2407.18121). The entries the
 * selection keeps by importance are the anchors; every other entry is merged
 * into its nearest anchor — nearest by position (the anchor whose original
 * position is closest; the earlier one on a tie), the neighbourhood the paper
 * folds into an anchor — by plain averaging: an anchor that stands for m
 * entries becomes their mean, k_a ← (m·k_a + Σ k_e) / (m + |E_a|), the same
 * for v, m counting what earlier merges folded in. The paper's other half,
 * evicting at a fixed relative position while generating, is not done.
 *
 * Keys are averaged as cached: after RoPE in `original` positions (as the
 * paper averages the cache), so the merged key is the mean of keys rotated to
 * nearby positions; before RoPE in `compact`.
 */
import { foldRow } from "../../../kernels/merge.ts";
import { dropped, type MergeHead, type Merger, MergeWeights } from "./merger.ts";

/** An anchor merger (one per run: it keeps the count each anchor stands for). */
export function anchors(): Merger {
  const counts = new MergeWeights(1);
  return {
    name: "anchors",
    state: { weights: counts },
    summary:
      "every evicted entry is averaged into its positionally nearest kept anchor (Elastic Cache, arXiv 2407.18121)",
    merge(h: MergeHead): Int32Array {
      const { d, keys, values, keep, positions, layer, head } = h;
      const out = dropped(h.n, keep);
      if (out.length === 0 || keep.length === 0) return new Int32Array(0);
      const touched = new Set<number>();
      let k = 0;
      for (const e of out) {
        // keep is ascending in index and in position: walk to the first anchor after e
        while (k < keep.length && keep[k] < e) k++;
        const before = k > 0 ? keep[k - 1] : -1, after = k < keep.length ? keep[k] : -1;
        const a = after < 0 || (before >= 0 && positions[e] - positions[before] <= positions[after] - positions[e])
          ? before
          : after;
        const m = counts.get(layer, head, positions[a]);
        foldRow(keys, d, a, m, e, 1);
        counts.set(layer, head, positions[a], foldRow(values, d, a, m, e, 1));
        touched.add(a);
      }
      counts.forget(layer, head, Array.from(out, (e) => positions[e]));
      return Int32Array.from([...touched].sort((a, b) => a - b));
    },
  };
}
