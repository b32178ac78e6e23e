/**
 * Training features in the decoder graph (`GraphOptions.features`), for
 * `tome train locret` on models too large for the reference forward:
 *   qkv_L             f32 [1, S, (H + 2·Hkv)·d]  each new token's [q; k; v] projections, before norms and RoPE
 *                                               (what the retaining head reads, `retaining.ts`)
 *   attn_groupmax_L   f32 [1, Hkv, P_L + S]      the largest attention each entry receives from any window query
 *                                               (s ≥ window_start), max over the KV head's query group: Locret's
 *                                               causal importance score (the `max` statistic sums over the group)
 * Only feature graphs have them, and they are computed on every run (no `If`):
 * the group max reads the window's rows only, a full softmax over past and new
 * keys for those queries.
 */
import { type AttentionShapes, shape } from "./attention.ts";
import type { Graph } from "./graph.ts";

/** Output names of the feature graph's per-layer outputs. */
export const featureIo = {
  qkv: (l: number) => `qkv_${l}`,
  groupMax: (l: number) => `attn_groupmax_${l}`,
};

/**
 * Adds layer l's feature outputs: qFlat/kFlat/vFlat [1,S,·] the raw projections, q [1,H,S,d] and k [1,K,S,d] rotated,
 * pastK [1,K,P,d] rotated float32, pastMask [1,K,1,P] additive.
 */
export function featureOutputs(
  g: Graph,
  sh: AttentionShapes,
  l: number,
  p: { qFlat: string; kFlat: string; vFlat: string; q: string; k: string; pastK: string; pastMask: string },
): void {
  g.within("features", () => {
    const { heads: H, kvHeads: K, headDim: d, S, windowStart, causal } = sh;
    g.op("Concat", [p.qFlat, p.kFlat, p.vFlat], { axis: -1 }, { out: featureIo.qkv(l) });
    const sEnd = g.op("Unsqueeze", [S, g.ints([0])]);
    const qw = g.op("Slice", [p.q, windowStart, sEnd, g.ints([2])]); // [1,H,w,d]
    const qg = g.op("Reshape", [g.op("Mul", [qw, g.floats([1 / Math.sqrt(d)], [])]), sh.grouped]); // [1,K,g·w,d]
    const past = g.op("Add", [g.op("MatMul", [qg, g.op("Transpose", [p.pastK], { perm: [0, 1, 3, 2] })]), p.pastMask]);
    const rows = g.op("Slice", [causal, windowStart, sEnd, g.ints([0])]); // [w,S]: the window's causal rows
    const five = shape(g, [1, K, H / K, -1, sEnd]);
    const fresh = g.op("Reshape", [
      g.op("Add", [
        g.op("Reshape", [g.op("MatMul", [qg, g.op("Transpose", [p.k], { perm: [0, 1, 3, 2] })]), five]),
        rows,
      ]),
      shape(g, [1, K, -1, sEnd]),
    ]); // [1,K,g·w,S]
    const probs = g.op("Softmax", [g.op("Concat", [past, fresh], { axis: -1 })], { axis: -1 }); // [1,K,g·w,P+S]
    const grouped = g.op("Reshape", [probs, shape(g, [1, K, H / K, -1, g.op("Shape", [probs], { start: 3 })])]);
    g.op("ReduceMax", [grouped, g.ints([2, 3])], { keepdims: 0 }, { out: featureIo.groupMax(l) });
  });
}

/** Declares the feature outputs of every layer. */
export function featureOutputDecls(g: Graph, layers: number, H: number, K: number, d: number): void {
  for (let l = 0; l < layers; l++) {
    g.output(featureIo.qkv(l), "float32", [1, "S", (H + 2 * K) * d]);
    g.output(featureIo.groupMax(l), "float32", [1, K, "T"]);
  }
}
