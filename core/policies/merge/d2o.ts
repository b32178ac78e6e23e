/**
 * D2O — Dynamic Discriminative Operations (arXiv 2406.13035), its token-level
 * merge. Each evicted entry e finds the retained entry r of the same head whose
 * key is most cosine-similar, u_e = cos(k_e, k_r). A threshold τ is an
 * exponential moving average of past maxima: per layer and head, at each
 * eviction τ ← β·τ + (1 − β)·max_e u_e (the first eviction sets τ to its
 * maximum). An entry with u_e ≥ τ is merged, the rest are dropped. The entries
 * E_r merged into r are averaged with weights exp(u_e), r itself weighing e
 * (= exp(1), its similarity to itself):
 *   k_r ← (e·k_r + Σ_{E_r} exp(u_e)·k_e) / (e + Σ_{E_r} exp(u_e)), and the same for v.
 * tome keeps the weight r stands for (e plus everything merged into it so
 * far), so a later merge into r stays the weighted average of all its parts.
 *
 * Keys are compared and averaged as cached: in `original` positions after RoPE,
 * as the paper does (it merges the cache's keys), so two keys are similar only
 * when their content and their rotation agree — in practice neighbours; an
 * average of keys rotated to different positions is a key at neither. In
 * `compact` positions keys are cached before RoPE, so similarity is content only.
 * Layer budgets from attention density (the paper's other half) are not done.
 */
import { cosine, foldRow, nearestByCosine, rowNorms } from "../../../kernels/merge.ts";
import { type NearestSearch, unitRows } from "../../../kernels/nearest.ts";
import { dropped, HeadValues, type MergeHead, type Merger, MergeWeights } from "./merger.ts";

/** The smallest normal and the largest float32. */
const FLT_MIN = 2 ** -126, FLT_MAX = 3.4028234663852886e38;

/** β of the threshold's moving average. */
export const D2O_BETA = 0.7;

/** A D2O merger with its own thresholds and weights (one per run). */
export function d2o(beta = D2O_BETA): Merger {
  const weights = new MergeWeights(Math.E);
  const tau = new HeadValues();
  return {
    name: "d2o",
    state: { weights, thresholds: tau },
    summary: "evicted entries merge into their most cosine-similar kept key above an EMA threshold (arXiv 2406.13035)",
    search(h: MergeHead): NearestSearch | undefined {
      const { n, d, keys, keep } = h;
      const out = dropped(n, keep);
      if (out.length === 0 || keep.length === 0) return undefined;
      const norms = rowNorms(keys, n, d);
      // the batched search's error bound needs norms float32 holds to within its rounding: zero, or normal and finite
      for (const v of norms) if (v !== 0 && !(v >= FLT_MIN && v <= FLT_MAX)) return undefined;
      return {
        queries: out,
        candidates: keep,
        unit: unitRows(keys, n, d),
        exact: (i, j) => cosine(keys, d, norms, i, j),
      };
    },
    merge(h: MergeHead): Int32Array {
      const { d, keys, values, keep, positions, layer, head } = h;
      const out = dropped(h.n, keep);
      if (out.length === 0 || keep.length === 0) return new Int32Array(0);
      const { index, similarity } = h.nearest ?? nearestByCosine(keys, d, rowNorms(keys, h.n, d), out, keep);
      let max = -Infinity;
      for (const s of similarity) max = Math.max(max, s);
      const prev = tau.get(layer, head);
      const t = prev === undefined ? max : beta * prev + (1 - beta) * max;
      tau.set(layer, head, t);
      const touched = new Set<number>();
      for (let q = 0; q < out.length; q++) {
        if (!(similarity[q] >= t)) continue;
        const r = index[q], e = out[q];
        const w = Math.exp(similarity[q]);
        const wr = weights.get(layer, head, positions[r]);
        foldRow(keys, d, r, wr, e, w);
        weights.set(layer, head, positions[r], foldRow(values, d, r, wr, e, w));
        touched.add(r);
      }
      weights.forget(layer, head, Array.from(out, (e) => positions[e]));
      return Int32Array.from([...touched].sort((a, b) => a - b));
    },
  };
}
