/**
 * Low-precision KV entries for MiKV's low tier ("No Token Left Behind",
 * arXiv 2402.18096): per-token asymmetric round-to-nearest quantization at 4
 * or 2 bits, in groups of `group` channels along the head dimension, and the
 * per-channel outlier balancer.
 *
 * One row is one cached entry of one KV head (d channels). Each group of
 * `group` channels has a min m and a step s = (max − m) / (2^bits − 1); a value
 * x is stored as q = round((x − m) / s) ∈ [0, 2^bits) and read back as
 * q·s + m (float32: the product rounded, then the sum), so every value comes
 * back within s/2 of itself. With float16 parameters the min is rounded down
 * and the step up to float16 before q is chosen, so the bound holds for the
 * stored parameters and nothing is clamped.
 *
 *   data    uint8 [rows, d·bits/8]   value i of a row in byte ⌊i·bits/8⌋, the lowest bits first
 *   scales  [rows, d/group]          steps s (float32, or float16 bit patterns)
 *   mins    [rows, d/group]          mins m, the same type
 *
 * The balancer (SmoothQuant's migration at α = ½, with keys in the role of
 * activations): per channel i, b_i = sqrt(max|k_i| / max|q_i|) over one
 * chunk's queries and keys (of one KV head and its query group); keys are
 * stored as k_i / b_i and queries read them as q_i · b_i, so q·k is unchanged
 * and both channel maxima become sqrt(max|q_i| · max|k_i|): an outlier key
 * channel is squeezed before quantization. (Written sqrt(max|q| / max|k|) in
 * the issue, that ratio would divide an outlier key channel by a factor below
 * one and widen it; tests/kv_quant_test.ts checks the balanced maxima.)
 */
import { fromF16Bits, toF16Bits } from "./fp16.ts";

/** Bits per low-tier value. */
export type LowBits = 2 | 4;

/** How a low tier stores its entries. */
export interface KvQuantSpec {
  bits: LowBits;
  /** Channels per group: divides the head dimension. */
  group: number;
  /** The type of the steps and mins. */
  params: "float32" | "float16";
}

/** Rows quantized per {@link KvQuantSpec}, in the layout of the module comment. */
export interface QuantizedRows {
  spec: KvQuantSpec;
  rows: number;
  d: number;
  data: Uint8Array;
  scales: Float32Array | Uint16Array;
  mins: Float32Array | Uint16Array;
}

/** Bytes of one row's packed values. */
export function rowBytes(d: number, bits: LowBits): number {
  return (d * bits) / 8;
}

/** Throws unless `spec` fits rows of `d` channels. */
export function checkSpec(spec: KvQuantSpec, d: number): void {
  if (spec.bits !== 2 && spec.bits !== 4) throw new Error(`low tier: ${spec.bits} bits (2 or 4)`);
  if (!Number.isInteger(spec.group) || spec.group < 1 || d % spec.group !== 0) {
    throw new Error(`low tier: group ${spec.group} does not divide the head dimension ${d}`);
  }
  if ((d * spec.bits) % 8 !== 0) throw new Error(`low tier: ${d} channels at ${spec.bits} bits are not whole bytes`);
}

/** Empty storage for `rows` rows of `d` channels. */
export function allocRows(rows: number, d: number, spec: KvQuantSpec): QuantizedRows {
  checkSpec(spec, d);
  const groups = rows * (d / spec.group);
  const params = () => (spec.params === "float32" ? new Float32Array(groups) : new Uint16Array(groups));
  return { spec, rows, d, data: new Uint8Array(rows * rowBytes(d, spec.bits)), scales: params(), mins: params() };
}

/** The float16 bit pattern next above (`up`) or below a finite one. */
function stepF16(h: number, up: boolean): number {
  if ((h & 0x7fff) === 0) return up ? 0x0001 : 0x8001;
  const negative = (h & 0x8000) !== 0;
  return up !== negative ? h + 1 : h - 1;
}

/** The float16 value nearest `x` on the side `up` (≥ x) or down (≤ x), as bits. */
function f16Toward(x: number, up: boolean): number {
  let h = toF16Bits(x);
  const v = fromF16Bits(h);
  if (up ? v < x : v > x) h = stepF16(h, up);
  return h;
}

/**
 * Quantizes `rows` rows of `src` (row-major, `d` channels, from row `srcRow`)
 * into `dst` from row `dstRow`.
 */
export function quantizeRowsInto(
  src: Float32Array,
  srcRow: number,
  rows: number,
  dst: QuantizedRows,
  dstRow: number,
): void {
  const { d, spec } = dst;
  const { bits, group } = spec;
  const levels = (1 << bits) - 1;
  // value i goes to byte i >> shift, at bits (i & lane)·bits: perByte = 8 / bits values a byte
  const shift = bits === 4 ? 1 : 2, lane = 8 / bits - 1;
  const groups = d / group;
  const bytes = rowBytes(d, bits);
  const half = spec.params === "float16";
  for (let r = 0; r < rows; r++) {
    const x = (srcRow + r) * d;
    const out = (dstRow + r) * bytes;
    dst.data.fill(0, out, out + bytes);
    for (let gi = 0; gi < groups; gi++) {
      let lo = Infinity;
      let hi = -Infinity;
      for (let i = gi * group; i < (gi + 1) * group; i++) {
        const v = src[x + i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      let min = lo;
      let scale = (hi - lo) / levels;
      const p = (dstRow + r) * groups + gi;
      if (half) {
        const mBits = f16Toward(lo, false);
        min = fromF16Bits(mBits);
        const sBits = f16Toward((hi - min) / levels, true);
        scale = fromF16Bits(sBits);
        dst.mins[p] = mBits;
        dst.scales[p] = sBits;
      } else {
        min = Math.fround(min);
        scale = Math.fround(scale);
        dst.mins[p] = min;
        dst.scales[p] = scale;
      }
      // a zero step stores every value as 0 (the bytes are already zero)
      if (!(scale > 0)) continue;
      for (let i = gi * group; i < (gi + 1) * group; i++) {
        const q = Math.min(levels, Math.max(0, Math.round((src[x + i] - min) / scale)));
        dst.data[out + (i >> shift)] |= q << ((i & lane) * bits);
      }
    }
  }
}

/** Quantizes `rows` rows of `d` channels. */
export function quantizeRows(src: Float32Array, rows: number, d: number, spec: KvQuantSpec): QuantizedRows {
  const q = allocRows(rows, d, spec);
  quantizeRowsInto(src, 0, rows, q, 0);
  return q;
}

/** Reads quantized rows back as float32, q·s + m rounded as the graph rounds it (the product, then the sum). */
export function dequantizeRows(q: QuantizedRows, out = new Float32Array(q.rows * q.d)): Float32Array {
  for (let r = 0; r < q.rows; r++) dequantizeRow(q, r, out, r);
  return out;
}

/** Reads row `row` of `q` back into row `at` of `out` (as {@link dequantizeRows}). */
export function dequantizeRow(q: QuantizedRows, row: number, out: Float32Array, at: number): void {
  const { d, spec } = q;
  const { bits, group } = spec;
  const mask = (1 << bits) - 1;
  const perByte = 8 / bits;
  const groups = d / group;
  const bytes = rowBytes(d, bits);
  const half = spec.params === "float16";
  for (let gi = 0; gi < groups; gi++) {
    const p = row * groups + gi;
    const s = half ? fromF16Bits(q.scales[p]) : q.scales[p];
    const m = half ? fromF16Bits(q.mins[p]) : q.mins[p];
    for (let i = gi * group; i < (gi + 1) * group; i++) {
      const v = (q.data[row * bytes + Math.floor(i / perByte)] >> ((i % perByte) * bits)) & mask;
      out[at * d + i] = Math.fround(Math.fround(v * s) + m);
    }
  }
}

/** Per channel, the largest |x| over `rows` rows of `d` channels. */
export function channelAbsMax(x: Float32Array, rows: number, d: number): Float32Array {
  const out = new Float32Array(d);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < d; i++) {
      const a = Math.abs(x[r * d + i]);
      if (a > out[i]) out[i] = a;
    }
  }
  return out;
}

/**
 * The balancer's factors b_i = sqrt(max|k_i| / max|q_i|), channel by channel
 * (any layout, the two arrays alike); 1 where either max is 0 or not finite,
 * so a dead channel is left alone.
 */
export function balanceFactors(qAbsMax: ArrayLike<number>, kAbsMax: ArrayLike<number>): Float32Array {
  if (qAbsMax.length !== kAbsMax.length) throw new Error("balancer: query and key maxima differ in length");
  const b = new Float32Array(qAbsMax.length);
  for (let i = 0; i < b.length; i++) {
    const r = Math.sqrt(kAbsMax[i] / qAbsMax[i]);
    b[i] = qAbsMax[i] > 0 && kAbsMax[i] > 0 && Number.isFinite(r) ? r : 1;
  }
  return b;
}

/** Keys of `rows` rows divided channel by channel by `b` (length d): what the low tier quantizes. */
export function balanceKeys(keys: Float32Array, rows: number, b: Float32Array): Float32Array {
  const d = b.length;
  const out = new Float32Array(rows * d);
  for (let r = 0; r < rows; r++) for (let i = 0; i < d; i++) out[r * d + i] = keys[r * d + i] / b[i];
  return out;
}
