/**
 * The attention block of the decoder graph: scaled dot-product attention of S
 * new queries over the retained cache and the new keys, with the statistics
 * eviction policies score by. Mirrors the attention loop of `reference.ts`.
 *
 * One softmax over both score blocks without concatenating K, V or the scores:
 * a shared max m, e = exp(score − m) per block, z = Σ e over both blocks,
 * out = (e_past·V_past + e_new·V_new) / z. Normalized probabilities (e / z) are
 * never materialized at full size: the all-query mass is a batched
 * vector–matrix product (1/z)ᵀ·e, and the window statistics touch only the
 * window's rows. Query heads are viewed as [Hkv, g·S], so K and V are never
 * repeated per query head.
 */
import { type StatName, type StatNames, STATS } from "./stats.ts";
import type { Graph } from "./graph.ts";

/** Shape tensors and the causal mask shared by every layer. */
export interface AttentionShapes {
  heads: number;
  kvHeads: number;
  headDim: number;
  /** int64 scalar S. */
  S: string;
  windowStart: string;
  /** [S, S]: 0, or −∞ where key t comes after query s. */
  causal: string;
  grouped: string;
  groupedScores: string;
  five: string;
  back: string;
  flat: string;
}

/** A shape tensor from numbers and int64 [1] tensors. */
export function shape(g: Graph, dims: (number | string)[]): string {
  return g.op("Concat", dims.map((v) => (typeof v === "number" ? g.ints([v]) : v)), { axis: 0 });
}

export function attentionShapes(
  g: Graph,
  S: string,
  H: number,
  K: number,
  d: number,
  windowStart: string,
): AttentionShapes {
  const S1 = g.op("Unsqueeze", [S, g.ints([0])]);
  const causal = g.within("mask", () => {
    // float, not int64: WebGPU has no int64 Range or Greater
    const r = g.op("Range", [g.floats([0], []), g.op("Cast", [S], { to: 1 }), g.floats([1], [])]);
    const future = g.op("Greater", [g.op("Unsqueeze", [r, g.ints([0])]), g.op("Unsqueeze", [r, g.ints([1])])]);
    return g.op("Where", [future, g.floats([-Infinity], []), g.floats([0], [])]);
  });
  return {
    heads: H,
    kvHeads: K,
    headDim: d,
    S,
    windowStart,
    causal,
    grouped: shape(g, [1, K, -1, d]),
    groupedScores: shape(g, [1, K, -1, S1]),
    five: shape(g, [1, K, H / K, S1, -1]),
    back: shape(g, [1, H, S1, d]),
    flat: shape(g, [1, S1, H * d]),
  };
}

export type { StatNames };

/**
 * The slots of a cache buffer [1,K,P,·] (`buffer`, any input of that shape) and their additive mask: slot indices
 * f32 [P], and [1,K,1,P] with 0 for the slots below layer `l`'s length of each KV head in `lengths` f32 [L, K],
 * −∞ past it. Float, not int64: the WebGPU provider has no int64 arithmetic.
 */
export function slotMask(g: Graph, buffer: string, lengths: string, l: number): { slots: string; mask: string } {
  const cap = g.op("Cast", [g.op("Gather", [g.op("Shape", [buffer]), g.ints([2], [])])], { to: 1 });
  const slots = g.op("Range", [g.floats([0], []), cap, g.floats([1], [])]);
  const own = g.op("Unsqueeze", [g.op("Gather", [lengths, g.ints([l], [])], { axis: 0 }), g.ints([1])]); // [K,1]
  const valid = g.op("Less", [g.op("Unsqueeze", [slots, g.ints([0])]), own]); // [K,P]
  const mask = g.op("Unsqueeze", [
    g.op("Where", [valid, g.floats([0], []), g.floats([-Infinity], [])]),
    g.ints([0, 2]),
  ]);
  return { slots, mask };
}

/**
 * A third score block in front of the past: MiKV's low tier (`low_tier.ts`), dequantized keys (rotated, times the
 * balancer) and values [1,K,Q,d], its additive mask [1,K,1,Q], and where its statistics go.
 */
export interface LowBlock {
  k: string;
  v: string;
  mask: string;
  names: StatNames;
}

/**
 * q [1,H,S,d] and k [1,K,S,d] rotated, v [1,K,S,d]; pastK (rotated) and pastV
 * [1,K,P,d], float32; pastMask [1,K,1,P] additive (0 for valid slots, −∞ for
 * empty ones), or "" when every slot is valid. Returns the attention output
 * [1,S,H·d] and the four statistics [1,K,P+S], written to `names`. With `low`,
 * a third block (the low tier) shares the softmax, and its four statistics
 * [1,K,Q] come back as `lowStats`.
 */
export function attend(
  g: Graph,
  sh: AttentionShapes,
  q: string,
  k: string,
  v: string,
  pastK: string,
  pastV: string,
  pastMask: string,
  names: StatNames,
  wantStats: string | null,
  low?: LowBlock,
): { out: string; stats: string[]; lowStats: string[] } {
  const { grouped, groupedScores, five, causal, headDim: d, S, windowStart } = sh;
  // scaled dot-product attention over [past ; new], causal over new; query head h reads KV head ⌊h / g⌋.
  // One softmax over both score blocks, never concatenating K, V or the scores: a shared max m,
  // e = exp(score − m) per block, z = Σ e over both, out = (e_past·V_past + e_new·V_new) / z.
  const qg = g.op("Reshape", [g.op("Mul", [q, g.floats([1 / Math.sqrt(d)], [])]), grouped]); // [1,K,g·S,d]
  let scorePast = g.op("MatMul", [qg, g.op("Transpose", [pastK], { perm: [0, 1, 3, 2] })]); // [1,K,g·S,P]
  if (pastMask) scorePast = g.op("Add", [scorePast, pastMask]);
  const scoreNew = g.op("Reshape", [
    g.op("Add", [
      g.op("Reshape", [g.op("MatMul", [qg, g.op("Transpose", [k], { perm: [0, 1, 3, 2] })]), five]),
      causal,
    ]),
    groupedScores,
  ]); // [1,K,g·S,S]
  // the low tier's scores [1,K,g·S,Q], masked
  const scoreLow = low
    ? g.op("Add", [g.op("MatMul", [qg, g.op("Transpose", [low.k], { perm: [0, 1, 3, 2] })]), low.mask])
    : "";
  // reductions over all blocks go through a 2- or 3-wide Concat: a reduction over an empty past (P = 0) is empty
  const bothBlocks = (op: string, a: string, b: string, c = "") =>
    g.op(op, [
      g.op(
        "Concat",
        [
          g.op(op, [a, g.ints([-1])], { keepdims: 1 }),
          g.op(op, [b, g.ints([-1])], { keepdims: 1 }),
          ...(c ? [g.op(op, [c, g.ints([-1])], { keepdims: 1 })] : []),
        ],
        {
          axis: -1,
        },
      ),
      g.ints([-1]),
    ], { keepdims: 1 });
  const m = bothBlocks("ReduceMax", scorePast, scoreNew, scoreLow); // [1,K,g·S,1]
  const expPast = g.op("Exp", [g.op("Sub", [scorePast, m])]);
  const expNew = g.op("Exp", [g.op("Sub", [scoreNew, m])]);
  const expLow = low ? g.op("Exp", [g.op("Sub", [scoreLow, m])]) : "";
  const invZ = g.op("Reciprocal", [bothBlocks("ReduceSum", expPast, expNew, expLow)]); // [1,K,g·S,1]
  let weighted = g.op("Add", [g.op("MatMul", [expPast, pastV]), g.op("MatMul", [expNew, v])]);
  if (low) weighted = g.op("Add", [weighted, g.op("MatMul", [expLow, low.v])]);
  const attn = g.op("Mul", [weighted, invZ]);
  const out = g.op("Reshape", [g.op("Transpose", [g.op("Reshape", [attn, sh.back])], { perm: [0, 2, 1, 3] }), sh.flat]);
  // attention statistics, summed over each KV head's query group; probabilities are e / z. Computed only when
  // `wantStats` is true: otherwise each is an empty [1, K, 0] (decode without a scoring policy skips their cost);
  // with `wantStats` null (graphs for WebGPU, which has no If kernel) they are always computed
  const outs = [names, ...(low ? [low.names] : [])].flatMap((n) =>
    STATS.map((s) => ({ name: n[s], type: "float32" as const }))
  );
  const all = g.within("stats", () =>
    g.branch(
      wantStats,
      outs,
      () => {
        const invZ5 = g.op("Reshape", [invZ, five]); // [1,K,g,S,1]
        const invZRow = g.op("Transpose", [invZ5], { perm: [0, 1, 2, 4, 3] }); // [1,K,g,1,S]
        const sEnd = g.op("Unsqueeze", [S, g.ints([0])]);
        const perBlock = (e: string): Record<StatName, string> => {
          const e5 = g.op("Reshape", [e, five]); // [1,K,g,S,n]
          // mass from all queries: Σ_s e[s, t] / z[s], a batched vector–matrix product
          const all = g.op("ReduceSum", [g.op("MatMul", [invZRow, e5]), g.ints([2, 3])], { keepdims: 0 });
          // the window rows only, normalized
          const win = g.op("Mul", [
            g.op("Slice", [e5, windowStart, sEnd, g.ints([3])]),
            g.op("Slice", [invZ5, windowStart, sEnd, g.ints([3])]),
          ]); // [1,K,g,w,n]
          const window = g.op("ReduceSum", [win, g.ints([2, 3])], { keepdims: 0 });
          const max = g.op("ReduceSum", [g.op("ReduceMax", [win, g.ints([3])], { keepdims: 0 }), g.ints([2])], {
            keepdims: 0,
          });
          const last = g.op("ReduceSum", [
            g.op("Slice", [win, g.ints([-1]), g.ints([2 ** 62]), g.ints([3])]),
            g.ints([2, 3]),
          ], {
            keepdims: 0,
          });
          return { all, window, max, last };
        };
        const past = perBlock(expPast);
        const fresh = perBlock(expNew);
        const both = STATS.map((s) => g.op("Concat", [past[s], fresh[s]], { axis: -1 }));
        if (!low) return both;
        const lowBlock = perBlock(expLow);
        return [...both, ...STATS.map((s) => lowBlock[s])];
      },
      () => outs.map(() => g.floats([], [1, sh.kvHeads, 0])),
    ));
  return { out, stats: all.slice(0, STATS.length), lowStats: all.slice(STATS.length) };
}
