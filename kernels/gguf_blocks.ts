/**
 * GGUF Q8_0 and Q4_0 tensors as MatMulNBits blocks, unchanged: their blocks of
 * 32 are one f16 scale d and 32 signed values q (Q8_0: int8; Q4_0: nibbles
 * minus 8, element j < 16 in the low nibble of byte j, element j + 16 in its
 * high nibble), and ggml's value is d·q — exactly a symmetric MatMulNBits block
 * of 32 with scale d (as float32, exact) and the values offset by 2^(bits−1)
 * ({@link fromSignedBlocks}). Q4_0 also fits 8 bits unchanged (values in
 * [−8, 7]); Q8_0 does not fit 4. Every other type has no such layout here
 * (kernels/quant.ts says why) and is re-quantized from float32.
 */
import { fromF16Bits } from "./fp16.ts";
import { type BlockQuant, fromSignedBlocks } from "./quant.ts";

/** The GGML types whose blocks a MatMulNBits matrix of `bits` takes unchanged. */
export const UNCHANGED_TYPES: Record<4 | 8, readonly string[]> = { 8: ["Q8_0", "Q4_0"], 4: ["Q4_0"] };

/** True when a tensor of GGML type `type` goes into `bits`-wide blocks unchanged. */
export function takesUnchanged(type: string, bits: 4 | 8): boolean {
  return UNCHANGED_TYPES[bits].includes(type);
}

/** The signed values and float32 scales of `count` Q8_0 or Q4_0 values (a multiple of 32). */
export function signedBlocks(
  type: string,
  src: Uint8Array,
  count: number,
): { values: Int8Array; scales: Float32Array } {
  const blockBytes = type === "Q8_0" ? 34 : type === "Q4_0" ? 18 : 0;
  if (!blockBytes) throw new Error(`${type} has no signed blocks of 32`);
  const nb = count / 32;
  if (!Number.isInteger(nb) || src.length < nb * blockBytes) {
    throw new Error(`${type}: ${src.length} bytes for ${count} values`);
  }
  const values = new Int8Array(count);
  const scales = new Float32Array(nb);
  for (let b = 0; b < nb; b++) {
    const at = b * blockBytes;
    scales[b] = fromF16Bits(src[at] | (src[at + 1] << 8));
    const y = b * 32;
    if (blockBytes === 34) {
      for (let j = 0; j < 32; j++) values[y + j] = (src[at + 2 + j] << 24) >> 24;
    } else {
      for (let j = 0; j < 16; j++) {
        const q = src[at + 2 + j];
        values[y + j] = (q & 15) - 8;
        values[y + j + 16] = (q >> 4) - 8;
      }
    }
  }
  return { values, scales };
}

/**
 * A [rows, cols] Q8_0 or Q4_0 tensor (ggml order: cols fastest, cols a multiple
 * of 32) as `bits`-wide MatMulNBits blocks of 32, with no re-quantization.
 */
export function ggufBlockQuant(type: string, src: Uint8Array, rows: number, cols: number, bits: 4 | 8): BlockQuant {
  if (!takesUnchanged(type, bits)) throw new Error(`${type} does not fit ${bits}-bit blocks unchanged`);
  if (cols % 32 !== 0) throw new Error(`${type}: ${cols} columns are not whole blocks of 32`);
  const { values, scales } = signedBlocks(type, src, rows * cols);
  return fromSignedBlocks(values, scales, rows, cols, bits, 32);
}
