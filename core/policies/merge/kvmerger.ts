/**
 * KVMerger (arXiv 2407.08454). Merging sets are runs of consecutive entries
 * whose keys are alike: walking a head's entries in order, entry i joins the
 * set of entry i − 1 when cos(k_{i−1}, k_i) ≥ the threshold (0.8 here); the
 * protected sinks and recent entries belong to no set. Each set merges into
 * its pivot p, the entry with the largest accumulated attention — here the
 * kept member the policy scores highest (H2O's score is the accumulated
 * attention per query; SnapKV's the window's attention), since the selection
 * has already chosen what stays (a set with no kept member is dropped; other
 * kept members stay as they are). The set's dropped members i are averaged into p with Gaussian-
 * kernel weights w_i = exp(−‖k_i − k_p‖² / 2σ²), the pivot weighing
 * exp(0) = 1 (plus what it already stands for from earlier merges):
 *   k_p ← (W_p·k_p + Σ w_i·k_i) / (W_p + Σ w_i), and the same for v.
 * σ² is the set's mean ‖k_i − k_p‖² over its dropped members (a choice of
 * tome's: the paper fixes σ by hand per model).
 *
 * Keys are compared as cached: after RoPE in `original` positions, as in the
 * paper (whose key-similarity analysis is on the cache's rotated keys), so a
 * run of alike keys is a run of alike neighbours; before RoPE in `compact`.
 */
import { cosine, foldRow, rowNorms, squaredDistance } from "../../../kernels/merge.ts";
import { type MergeHead, type Merger, MergeWeights } from "./merger.ts";

/** Cosine similarity of neighbouring keys that puts them in one merging set. */
export const KVMERGER_THRESHOLD = 0.8;

/** A KVMerger merger (one per run: it keeps the weight each pivot stands for). */
export function kvmerger(threshold = KVMERGER_THRESHOLD): Merger {
  const weights = new MergeWeights(1);
  return {
    name: "kvmerger",
    state: { weights: weights },
    summary:
      "runs of alike consecutive keys merge into their most-attended kept entry, Gaussian weights (arXiv 2407.08454)",
    merge(h: MergeHead): Int32Array {
      const { n, d, keys, values, keep, positions, importance, layer, head } = h;
      const kept = new Uint8Array(n);
      for (const i of keep) kept[i] = 1;
      const lo = h.protect.sinks, hi = n - h.protect.recent;
      const norms = rowNorms(keys, n, d);
      const touched: number[] = [];
      let start = lo;
      for (let i = lo; i <= hi; i++) {
        if (i < hi && i > start && cosine(keys, d, norms, i - 1, i) >= threshold) continue;
        // the set is start … i−1
        if (i - start > 1) mergeSet(start, i);
        start = i;
      }
      const gone: number[] = [];
      for (let i = 0; i < n; i++) if (!kept[i]) gone.push(positions[i]);
      weights.forget(layer, head, gone);
      return Int32Array.from(touched.sort((a, b) => a - b));

      function mergeSet(from: number, to: number): void {
        let p = -1;
        for (let i = from; i < to; i++) {
          if (kept[i] && (p < 0 || importance[i] > importance[p])) p = i;
        }
        if (p < 0) return;
        const members: number[] = [];
        const dist: number[] = [];
        for (let i = from; i < to; i++) {
          if (kept[i]) continue;
          members.push(i);
          dist.push(squaredDistance(keys, d, i, p));
        }
        if (members.length === 0) return;
        const sigma2 = dist.reduce((a, b) => a + b, 0) / dist.length;
        const ws = dist.map((x) => (sigma2 > 0 ? Math.exp(-x / (2 * sigma2)) : 1));
        let wp = weights.get(layer, head, positions[p]);
        for (let m = 0; m < members.length; m++) {
          foldRow(keys, d, p, wp, members[m], ws[m]);
          wp = foldRow(values, d, p, wp, members[m], ws[m]);
        }
        weights.set(layer, head, positions[p], wp);
        touched.push(p);
      }
    },
  };
}
