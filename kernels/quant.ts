/**
 * Block quantization of a weight matrix [rows, cols] (rows = outputs N, cols =
 * inputs K, Hugging Face's layout) in onnxruntime's `MatMulNBits` layout: each
 * row is cut into blocks of `block` columns along K (the last block padded with
 * zeros), each block has a float32 scale and a zero point, and a value is
 * `(q − zero) · scale` with q unsigned in [0, 2^bits).
 *
 *   data         uint8 [rows, blocks, block·bits/8]   4 bits: two values a byte, the first in the low nibble
 *   scales       float32 [rows, blocks]
 *   zeroPoints   uint8 [rows, ⌈blocks·bits/8⌉]        4 bits packed the same way; absent when symmetric
 *                                                     (the zero point is then 2^(bits−1): 8 or 128)
 *
 * The same layout is what `GatherBlockQuantized` (uint8 data, `bits`,
 * quantize_axis 1) reads, so a tied embedding is stored once for the lookup and
 * the LM head.
 *
 * Rounding is to the nearest level (RTN). Symmetric: scale = max|w| / (2^(bits−1) − 1),
 * zero 2^(bits−1). Asymmetric: the range [min(w, 0), max(w, 0)] over 2^bits − 1
 * steps, zero = round(−min / scale).
 *
 * GGUF: Q8_0 (blocks of 32, an f16 scale, int8 values) and Q4_0 (blocks of 32,
 * an f16 scale, 4-bit values with an implied offset of 8) are exactly
 * symmetric blocks of 32 here: q = value + 2^(bits−1), scale = the f16 scale
 * as float32 — see {@link fromSignedBlocks}. Q4_1 and Q8_1 carry a min rather
 * than a zero point (value = q·d + m), which is a zero point only when −m/d is
 * an integer, so they need re-quantization here; the K-quants (Q4_K, Q6_K …)
 * use 256-wide super-blocks with 6-bit sub-block scales and mins: Q4_K's
 * sub-blocks of 32 become blocks of 32 with a float32 scale (d·scale) and a
 * *float* zero point (dmin·min / (d·scale)). MatMulNBits' spec allows float
 * zero points, but this module writes uint8 ones only and whether the int8
 * (accuracy level 4) kernels take float ones is not measured: Q4_K is
 * re-quantized for now. Q6_K (6 bits) has no MatMulNBits width.
 * `gguf_blocks.ts` feeds {@link fromSignedBlocks} from a file's bytes.
 */

/** A block-quantized matrix in MatMulNBits' layout. */
export interface BlockQuant {
  bits: 4 | 8;
  block: number;
  rows: number;
  cols: number;
  /** [rows, blocks, block·bits/8] */
  data: Uint8Array;
  /** [rows, blocks] */
  scales: Float32Array;
  /** [rows, ⌈blocks·bits/8⌉], or absent for the symmetric zero point 2^(bits−1). */
  zeroPoints?: Uint8Array;
}

/** How to quantize. */
export interface QuantSpec {
  bits: 4 | 8;
  /** A power of two, 16 to 256 (MatMulNBits' constraint). */
  block: number;
  symmetric: boolean;
}

/** Blocks per row. */
export const blocksOf = (cols: number, block: number): number => Math.ceil(cols / block);

/** Bytes of the packed values of one block. */
const blobBytes = (block: number, bits: number): number => (block * bits) / 8;

/** Bytes of one row's packed zero points. */
export const zeroPointBytes = (blocks: number, bits: number): number => Math.ceil((blocks * bits) / 8);

/** Writes an unsigned `bits`-wide value at element `i` of a packed byte array. */
function put(a: Uint8Array, at: number, i: number, bits: number, q: number): void {
  if (bits === 8) a[at + i] = q;
  else a[at + (i >> 1)] |= (i & 1) ? q << 4 : q;
}

/** Reads the unsigned `bits`-wide value at element `i` of a packed byte array. */
function get(a: Uint8Array, at: number, i: number, bits: number): number {
  if (bits === 8) return a[at + i];
  const b = a[at + (i >> 1)];
  return (i & 1) ? b >> 4 : b & 15;
}

/** Checks a spec against MatMulNBits' constraints. */
export function checkSpec(spec: QuantSpec): void {
  if (spec.bits !== 4 && spec.bits !== 8) throw new Error(`quantization: ${spec.bits} bits (4 or 8)`);
  const b = spec.block;
  if (!(b >= 16 && b <= 256 && (b & (b - 1)) === 0)) throw new Error(`quantization: block ${b} (16..256, power of 2)`);
}

/** Quantizes `w` [rows, cols] (row-major) per block of `spec.block` columns, rounding to nearest. */
export function quantizeBlocks(w: Float32Array, rows: number, cols: number, spec: QuantSpec): BlockQuant {
  checkSpec(spec);
  if (w.length !== rows * cols) throw new Error(`quantization: ${w.length} values do not fit [${rows}, ${cols}]`);
  const { bits, block, symmetric } = spec;
  const nb = blocksOf(cols, block);
  const blob = blobBytes(block, bits);
  const levels = (1 << bits) - 1;
  const half = 1 << (bits - 1);
  const zpRow = zeroPointBytes(nb, bits);
  const data = new Uint8Array(rows * nb * blob);
  const scales = new Float32Array(rows * nb);
  const zeroPoints = symmetric ? undefined : new Uint8Array(rows * zpRow);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      const start = r * cols + b * block;
      const end = r * cols + Math.min(cols, (b + 1) * block);
      let lo = 0, hi = 0;
      for (let i = start; i < end; i++) {
        const v = w[i];
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      let scale: number, zero: number;
      if (symmetric) {
        scale = Math.max(hi, -lo) / (half - 1);
        zero = half;
      } else {
        scale = (hi - lo) / levels;
        zero = scale === 0 ? 0 : Math.min(levels, Math.max(0, Math.round(-lo / scale)));
      }
      scale = Math.fround(scale);
      const inv = scale === 0 ? 0 : 1 / scale;
      const at = (r * nb + b) * blob;
      for (let i = 0; i < block; i++) {
        const v = start + i < end ? w[start + i] : 0;
        const q = Math.min(levels, Math.max(0, Math.round(v * inv) + zero));
        put(data, at, i, bits, q);
      }
      scales[r * nb + b] = scale;
      if (zeroPoints) put(zeroPoints, r * zpRow, b, bits, zero);
    }
  }
  return { bits, block, rows, cols, data, scales, zeroPoints };
}

/** The float32 values a block-quantized matrix stands for, [rows, cols]. */
export function dequantizeBlocks(q: BlockQuant): Float32Array {
  const { bits, block, rows, cols } = q;
  const nb = blocksOf(cols, block);
  const blob = blobBytes(block, bits);
  const zpRow = zeroPointBytes(nb, bits);
  const half = 1 << (bits - 1);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      const scale = q.scales[r * nb + b];
      const zero = q.zeroPoints ? get(q.zeroPoints, r * zpRow, b, bits) : half;
      const at = (r * nb + b) * blob;
      const n = Math.min(block, cols - b * block);
      for (let i = 0; i < n; i++) out[r * cols + b * block + i] = (get(q.data, at, i, bits) - zero) * scale;
    }
  }
  return out;
}

/**
 * A symmetric block-quantized matrix from signed values and one scale per
 * block, as GGUF's Q8_0 (int8 in [−128, 127], bits 8) and Q4_0 (its nibbles
 * minus 8, in [−8, 7], bits 4) store them with blocks of 32: no
 * re-quantization, the values are only offset by 2^(bits−1).
 */
export function fromSignedBlocks(
  values: Int8Array,
  scales: Float32Array,
  rows: number,
  cols: number,
  bits: 4 | 8,
  block = 32,
): BlockQuant {
  checkSpec({ bits, block, symmetric: true });
  const nb = blocksOf(cols, block);
  if (values.length !== rows * cols || scales.length !== rows * nb) {
    throw new Error(`quantization: ${values.length} values / ${scales.length} scales do not fit [${rows}, ${cols}]`);
  }
  const half = 1 << (bits - 1);
  const blob = blobBytes(block, bits);
  const data = new Uint8Array(rows * nb * blob);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < nb; b++) {
      const at = (r * nb + b) * blob;
      for (let i = 0; i < block; i++) {
        const c = b * block + i;
        const v = c < cols ? values[r * cols + c] : 0;
        if (v < -half || v >= half) throw new Error(`quantization: value ${v} does not fit ${bits} bits`);
        put(data, at, i, bits, v + half);
      }
    }
  }
  return { bits, block, rows, cols, data, scales: scales.slice() };
}
