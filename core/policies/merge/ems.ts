/**
 * EMS's evict-then-merge (Li et al., arXiv 2412.08521), head-wise. After the
 * selection has kept a head's budget by the policy's score, the entries that
 * lost are split in two by the same score: the lowest are evicted outright,
 * the highest — the to-be-merged pool, at most ⌈budget·share⌉ of them — are
 * each assigned to a class: the kept entry ("class centre") whose key is most
 * cosine-similar, or the zero class when that similarity is below the
 * threshold. Zero-class entries are dropped: in the paper the zero class is a
 * centre of zeros, which lets every head run the same merge in parallel
 * whatever it keeps; on CPU the zero class is simply not written. Each
 * centre becomes the mean of everything it stands for (`kernels/class_merge.ts`:
 * values averaged, keys averaged in direction with their mean norm kept),
 * counting what earlier chunks folded into it, so a centre stays the mean of
 * its class over the whole read.
 *
 * Where the paper's text was not at hand, tome's choices, each named as a
 * constant: the pool share (1/4 of the budget: the entries nearest the cut,
 * which bounds the similarity search at budget²/4 dot products per head), the
 * threshold (cosine 0.5), and plain counting weights (a class centre is a
 * centroid). Keys are compared and averaged as cached (after RoPE in
 * `original` positions, before it in `compact`), like the other mergers.
 */
import { mergeClass, nearestCentre } from "../../../kernels/class_merge.ts";
import { dot4, type NearestSearch, unitRows } from "../../../kernels/nearest.ts";
import { topK } from "../../../kernels/topk.ts";
import { dropped, type MergeHead, type Merger, MergeWeights } from "./merger.ts";

/** Cosine similarity below which a to-be-merged entry goes to the zero class (is dropped). */
export const EMS_THRESHOLD = 0.5;
/** The to-be-merged pool, as a share of the head's budget (the highest-scored entries that lost). */
export const EMS_POOL_SHARE = 0.25;

/** EMS's merge as a merger (one per run: it keeps the count each class centre stands for). */
export function emsMerge(threshold = EMS_THRESHOLD, poolShare = EMS_POOL_SHARE): Merger {
  const counts = new MergeWeights(1);
  return {
    name: "ems",
    state: { weights: counts },
    summary:
      "the best-scored evicted entries join their most similar kept key's class (centroid), below cos 0.5 the zero class drops them (EMS, arXiv 2412.08521)",
    search(h: MergeHead): NearestSearch | undefined {
      const { n, d, keys, keep } = h;
      const out = dropped(n, keep);
      if (out.length === 0 || keep.length === 0) return undefined;
      // nearestCentre's similarity: the dot product of the rows scaled to unit length, summed as it sums
      const unit = unitRows(keys, n, d);
      return {
        queries: toBeMerged(h, out),
        candidates: keep,
        unit,
        exact: (i, j) => dot4(unit, i * d, unit, j * d, d),
      };
    },
    merge(h: MergeHead): Int32Array {
      const { d, keys, values, keep, positions, layer, head } = h;
      const out = dropped(h.n, keep);
      if (out.length === 0 || keep.length === 0) return new Int32Array(0);
      counts.forget(layer, head, Array.from(out, (e) => positions[e]));
      const tbm = toBeMerged(h, out);
      const { index, similarity } = h.nearest ?? nearestCentre(keys, d, tbm, keep);
      const classes = new Map<number, number[]>();
      for (let q = 0; q < tbm.length; q++) {
        if (!(similarity[q] >= threshold)) continue; // the zero class
        const c = index[q];
        const members = classes.get(c);
        if (members) members.push(tbm[q]);
        else classes.set(c, [tbm[q]]);
      }
      const touched = [...classes.keys()].sort((a, b) => a - b);
      for (const c of touched) {
        const m = counts.get(layer, head, positions[c]);
        counts.set(layer, head, positions[c], mergeClass(keys, values, d, c, m, classes.get(c)!));
      }
      return Int32Array.from(touched);
    },
  };

  /** The to-be-merged pool: the ⌈budget·share⌉ best-scored of the evicted entries `out`. */
  function toBeMerged(h: MergeHead, out: Int32Array): Int32Array {
    const pool = Math.min(out.length, Math.ceil(h.keep.length * poolShare));
    const chosen = topK(Array.from(out, (e) => h.importance[e]), out.length, pool);
    return Int32Array.from(chosen, (j) => out[j]);
  }
}
