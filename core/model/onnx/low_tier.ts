/**
 * MiKV's low tier in the decoder graph ("No Token Left Behind", arXiv
 * 2402.18096): entries that lost the eviction, fed in their quantized form
 * (`kernels/kv_quant.ts`: per-token asymmetric int4 or int2 in channel groups)
 * and dequantized here, so attention runs over three score blocks — low past,
 * high past, new — under one softmax (`attention.ts`).
 *
 * Inputs per layer L (only in graphs built with `GraphOptions.lowTier`):
 *   low_key_L, low_value_L              uint8 [1, Hkv, Q_L, d·bits/8]   packed values, the lowest bits first
 *   low_key_scale_L, low_key_min_L      [1, Hkv, Q_L, G] steps and mins of G = d / group channel groups
 *   low_value_scale_L, low_value_min_L  (the KV dtype: float32, or float16)
 *   low_balance_L                       f32 [1, Hkv, 1, d] the channel balancer b: stored keys are k / b, so the
 *                                       dequantized keys are multiplied by b (the same as queries times b)
 *   low_lengths                         f32 [L, Hkv] valid low entries of each layer and KV head
 * Outputs per layer:
 *   attn_<stat>_low_L                   f32 [1, Hkv, Q_L] the four statistics over the low entries (so an entry
 *                                       can be promoted back), in the same `If` as the others
 *   low_query_absmax_L                  f32 [1, Hkv, d] max |q_i| over the chunk's queries (after RoPE) of each
 *                                       KV head's query group: the balancer's query side
 *
 * Unpacking is float arithmetic on the byte values (exact below 2^24): digit
 * j of byte x is ⌊x / 2^(bits·j)⌋ mod 2^bits, with Floor, Div, Mul and Sub —
 * no integer bit ops and no int64 arithmetic on the data, so it runs wherever
 * float32 elementwise ops run (the WebGPU provider included). A value is
 * q·s + m in float32: the product rounded, then the sum, as
 * `dequantizeRows` computes it.
 */
import type { Graph } from "./graph.ts";
import { shape, slotMask } from "./attention.ts";
import { type StatName, type StatNames, STATS } from "./stats.ts";

/** Bits of a low-tier value. */
export type LowTier = "int4" | "int2";

/** Bits per value of a low tier. */
export const lowBits = (t: LowTier): 2 | 4 => (t === "int4" ? 4 : 2);

/** Names of the low tier's inputs and outputs. */
export const lowIo = {
  key: (l: number) => `low_key_${l}`,
  keyScale: (l: number) => `low_key_scale_${l}`,
  keyMin: (l: number) => `low_key_min_${l}`,
  value: (l: number) => `low_value_${l}`,
  valueScale: (l: number) => `low_value_scale_${l}`,
  valueMin: (l: number) => `low_value_min_${l}`,
  balance: (l: number) => `low_balance_${l}`,
  lengths: "low_lengths",
  stat: (name: StatName, l: number) => `attn_${name}_low_${l}`,
  queryAbsMax: (l: number) => `low_query_absmax_${l}`,
};

/** The low tier's per-layer inputs and `low_lengths`. */
export function lowInputs(
  g: Graph,
  layers: number,
  K: number,
  d: number,
  tier: LowTier,
  paramType: "float32" | "float16",
): void {
  const bytes = (d * lowBits(tier)) / 8;
  if (!Number.isInteger(bytes)) throw new Error(`low tier ${tier}: head dimension ${d} is not whole bytes`);
  for (let l = 0; l < layers; l++) {
    const Q = `Q${l}`;
    for (
      const [data, scale, min] of [
        [lowIo.key(l), lowIo.keyScale(l), lowIo.keyMin(l)],
        [lowIo.value(l), lowIo.valueScale(l), lowIo.valueMin(l)],
      ]
    ) {
      g.input(data, "uint8", [1, K, Q, bytes]);
      g.input(scale, paramType, [1, K, Q, "G"]);
      g.input(min, paramType, [1, K, Q, "G"]);
    }
    g.input(lowIo.balance(l), "float32", [1, K, 1, d]);
  }
  g.input(lowIo.lengths, "float32", [layers, K]);
}

/** The low tier's outputs, declared after the graph's others. */
export function lowOutputs(g: Graph, layers: number, K: number, d: number): void {
  for (let l = 0; l < layers; l++) {
    for (const s of STATS) g.output(lowIo.stat(s, l), "float32", [1, K, `Q${l}`]);
  }
  for (let l = 0; l < layers; l++) g.output(lowIo.queryAbsMax(l), "float32", [1, K, d]);
}

/** Packed values [1,K,Q,B] with steps and mins [1,K,Q,G] → float32 [1,K,Q,d]. */
function dequantize(g: Graph, packed: string, scale: string, min: string, bits: number, d: number, half: boolean) {
  const per = 8 / bits;
  const base = 2 ** bits;
  const bytes = g.op("Unsqueeze", [g.op("Cast", [packed], { to: 1 }), g.ints([-1])]); // [1,K,Q,B,1]
  const shifted = g.op("Floor", [
    g.op("Div", [bytes, g.floats(Array.from({ length: per }, (_, j) => base ** j), [per])]),
  ]); // [1,K,Q,B,per]: ⌊x / 2^(bits·j)⌋
  const digits = g.op("Sub", [
    shifted,
    g.op("Mul", [g.op("Floor", [g.op("Div", [shifted, g.floats([base], [])])]), g.floats([base], [])]),
  ]);
  const f32 = (x: string) => (half ? g.op("Cast", [x], { to: 1 }) : x);
  // [1,K,Q,G,d/G]: 0 copies a dimension, so an empty tier (Q = 0) reshapes without inferring a −1
  const G = g.op("Shape", [scale], { start: 3, end: 4 });
  const grouped = g.op("Reshape", [
    digits,
    g.op("Concat", [g.ints([0, 0, 0]), G, g.op("Div", [g.ints([d]), G])], { axis: 0 }),
  ]);
  const values = g.op("Add", [
    g.op("Mul", [grouped, g.op("Unsqueeze", [f32(scale), g.ints([-1])])]),
    g.op("Unsqueeze", [f32(min), g.ints([-1])]),
  ]);
  return g.op("Reshape", [values, g.ints([0, 0, 0, d])]);
}

/** Layer l's low block: dequantized keys (times the balancer) and values [1,K,Q,d], the additive mask [1,K,1,Q]. */
export function lowBlock(
  g: Graph,
  l: number,
  d: number,
  tier: LowTier,
  half: boolean,
  names: StatNames,
): { k: string; v: string; mask: string; names: StatNames } {
  return g.within("low", () => {
    const bits = lowBits(tier);
    const k = g.op("Mul", [
      dequantize(g, lowIo.key(l), lowIo.keyScale(l), lowIo.keyMin(l), bits, d, half),
      lowIo.balance(l),
    ]);
    const v = dequantize(g, lowIo.value(l), lowIo.valueScale(l), lowIo.valueMin(l), bits, d, half);
    const { mask } = slotMask(g, lowIo.key(l), lowIo.lengths, l);
    return { k, v, mask, names };
  });
}

/** Max |q_i| of q [1,H,S,d] (after RoPE) over each KV head's query group and the chunk: [1,K,d], to `out`. */
export function queryAbsMax(g: Graph, q: string, K: number, d: number, out: string): string {
  return g.within("low", () => {
    const grouped = g.op("Reshape", [q, shape(g, [1, K, -1, d])]);
    return g.op("ReduceMax", [g.op("Abs", [grouped]), g.ints([2])], { keepdims: 0 }, { out });
  });
}
