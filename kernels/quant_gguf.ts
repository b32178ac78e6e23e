/**
 * GGML tensor block formats (the types inside GGUF files): block sizes, and
 * dequantization to float32 written from the block definitions in ggml
 * (`ggml-common.h`, `dequantize_row_*` in `ggml-quants.c`), plus Q8_0 and Q4_0
 * quantization for the writer. Pure functions over bytes; no file knowledge.
 */
import { fromF16Bits, toF16Bits } from "./fp16.ts";

/** A GGML type: id (as stored in GGUF), name, values per block, bytes per block. */
export interface GgmlType {
  id: number;
  name: string;
  blockSize: number;
  typeSize: number;
}

const TYPES: GgmlType[] = [
  [0, "F32", 1, 4],
  [1, "F16", 1, 2],
  [2, "Q4_0", 32, 18],
  [3, "Q4_1", 32, 20],
  [6, "Q5_0", 32, 22],
  [7, "Q5_1", 32, 24],
  [8, "Q8_0", 32, 34],
  [9, "Q8_1", 32, 36],
  [10, "Q2_K", 256, 84],
  [11, "Q3_K", 256, 110],
  [12, "Q4_K", 256, 144],
  [13, "Q5_K", 256, 176],
  [14, "Q6_K", 256, 210],
  [15, "Q8_K", 256, 292],
  [16, "IQ2_XXS", 256, 66],
  [17, "IQ2_XS", 256, 74],
  [18, "IQ3_XXS", 256, 98],
  [19, "IQ1_S", 256, 50],
  [20, "IQ4_NL", 32, 18],
  [21, "IQ3_S", 256, 110],
  [22, "IQ2_S", 256, 82],
  [23, "IQ4_XS", 256, 136],
  [24, "I8", 1, 1],
  [25, "I16", 1, 2],
  [26, "I32", 1, 4],
  [27, "I64", 1, 8],
  [28, "F64", 1, 8],
  [29, "IQ1_M", 256, 56],
  [30, "BF16", 1, 2],
  [34, "TQ1_0", 256, 54],
  [35, "TQ2_0", 256, 66],
  [39, "MXFP4", 32, 17],
].map(([id, name, blockSize, typeSize]) => ({ id, name, blockSize, typeSize } as GgmlType));

const BY_ID = new Map(TYPES.map((t) => [t.id, t]));
const BY_NAME = new Map(TYPES.map((t) => [t.name, t]));

/** The GGML type with this id, or undefined when unknown. */
export function ggmlType(id: number): GgmlType | undefined {
  return BY_ID.get(id);
}

/** The GGML type with this name ("Q8_0"); throws on an unknown name (a programming error). */
export function ggmlTypeNamed(name: string): GgmlType {
  const t = BY_NAME.get(name);
  if (!t) throw new Error(`unknown GGML type ${name}`);
  return t;
}

/** Types tome can dequantize. */
export const DEQUANTIZABLE = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"];

/** Bytes of `count` values of type `t` (count must be a multiple of the block size). */
export function typeBytes(t: GgmlType, count: number): number {
  return (count / t.blockSize) * t.typeSize;
}

let F16_TABLE: Float32Array | null = null;
function f16Table(): Float32Array {
  if (!F16_TABLE) {
    F16_TABLE = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) F16_TABLE[i] = fromF16Bits(i);
  }
  return F16_TABLE;
}

/**
 * Dequantizes `count` values of GGML type `name` from `src` (exactly their
 * bytes) into float32. Throws on a type tome does not dequantize.
 */
export function dequantize(name: string, src: Uint8Array, count: number): Float32Array {
  const fn = DEQUANT[name];
  if (!fn) throw new Error(`no dequantizer for ${name}`);
  const out = new Float32Array(count);
  fn(src, out, count);
  return out;
}

type Dequant = (src: Uint8Array, out: Float32Array, n: number) => void;

const h = (b: Uint8Array, at: number, t: Float32Array) => t[b[at] | (b[at + 1] << 8)];

const DEQUANT: Record<string, Dequant> = {
  F32(src, out, n) {
    new Uint8Array(out.buffer).set(src.subarray(0, n * 4));
  },
  F16(src, out, n) {
    const t = f16Table();
    for (let i = 0; i < n; i++) out[i] = h(src, 2 * i, t);
  },
  BF16(src, out, n) {
    const u = new Uint32Array(out.buffer);
    for (let i = 0; i < n; i++) u[i] = (src[2 * i] | (src[2 * i + 1] << 8)) << 16;
  },
  Q8_0(src, out, n) {
    const t = f16Table();
    for (let b = 0; b < n / 32; b++) {
      const at = b * 34;
      const d = h(src, at, t);
      for (let j = 0; j < 32; j++) out[b * 32 + j] = d * ((src[at + 2 + j] << 24) >> 24);
    }
  },
  Q4_0(src, out, n) {
    const t = f16Table();
    for (let b = 0; b < n / 32; b++) {
      const at = b * 18;
      const d = h(src, at, t);
      const y = b * 32;
      for (let j = 0; j < 16; j++) {
        const q = src[at + 2 + j];
        out[y + j] = ((q & 0xf) - 8) * d;
        out[y + j + 16] = ((q >> 4) - 8) * d;
      }
    }
  },
  Q4_1(src, out, n) {
    const t = f16Table();
    for (let b = 0; b < n / 32; b++) {
      const at = b * 20;
      const d = h(src, at, t);
      const m = h(src, at + 2, t);
      const y = b * 32;
      for (let j = 0; j < 16; j++) {
        const q = src[at + 4 + j];
        out[y + j] = (q & 0xf) * d + m;
        out[y + j + 16] = (q >> 4) * d + m;
      }
    }
  },
  Q5_0(src, out, n) {
    const t = f16Table();
    for (let b = 0; b < n / 32; b++) {
      const at = b * 22;
      const d = h(src, at, t);
      const qh = (src[at + 2] | (src[at + 3] << 8) | (src[at + 4] << 16) | (src[at + 5] << 24)) >>> 0;
      const y = b * 32;
      for (let j = 0; j < 16; j++) {
        const q = src[at + 6 + j];
        const hi0 = ((qh >>> j) & 1) << 4;
        const hi1 = ((qh >>> (j + 16)) & 1) << 4;
        out[y + j] = (((q & 0xf) | hi0) - 16) * d;
        out[y + j + 16] = (((q >> 4) | hi1) - 16) * d;
      }
    }
  },
  Q5_1(src, out, n) {
    const t = f16Table();
    for (let b = 0; b < n / 32; b++) {
      const at = b * 24;
      const d = h(src, at, t);
      const m = h(src, at + 2, t);
      const qh = (src[at + 4] | (src[at + 5] << 8) | (src[at + 6] << 16) | (src[at + 7] << 24)) >>> 0;
      const y = b * 32;
      for (let j = 0; j < 16; j++) {
        const q = src[at + 8 + j];
        const hi0 = ((qh >>> j) & 1) << 4;
        const hi1 = ((qh >>> (j + 16)) & 1) << 4;
        out[y + j] = ((q & 0xf) | hi0) * d + m;
        out[y + j + 16] = ((q >> 4) | hi1) * d + m;
      }
    }
  },
  Q4_K(src, out, n) {
    const t = f16Table();
    const sc = new Uint8Array(8);
    const mn = new Uint8Array(8);
    for (let b = 0; b < n / 256; b++) {
      const at = b * 144;
      const d = h(src, at, t);
      const dmin = h(src, at + 2, t);
      kScales(src, at + 4, sc, mn);
      const qs = at + 16;
      const y = b * 256;
      for (let g = 0; g < 4; g++) {
        const d1 = d * sc[2 * g], m1 = dmin * mn[2 * g];
        const d2 = d * sc[2 * g + 1], m2 = dmin * mn[2 * g + 1];
        for (let l = 0; l < 32; l++) {
          const q = src[qs + 32 * g + l];
          out[y + 64 * g + l] = d1 * (q & 0xf) - m1;
          out[y + 64 * g + 32 + l] = d2 * (q >> 4) - m2;
        }
      }
    }
  },
  Q5_K(src, out, n) {
    const t = f16Table();
    const sc = new Uint8Array(8);
    const mn = new Uint8Array(8);
    for (let b = 0; b < n / 256; b++) {
      const at = b * 176;
      const d = h(src, at, t);
      const dmin = h(src, at + 2, t);
      kScales(src, at + 4, sc, mn);
      const qh = at + 16;
      const qs = at + 48;
      const y = b * 256;
      for (let g = 0; g < 4; g++) {
        const d1 = d * sc[2 * g], m1 = dmin * mn[2 * g];
        const d2 = d * sc[2 * g + 1], m2 = dmin * mn[2 * g + 1];
        for (let l = 0; l < 32; l++) {
          const q = src[qs + 32 * g + l];
          const hb = src[qh + l];
          out[y + 64 * g + l] = d1 * ((q & 0xf) + (((hb >> (2 * g)) & 1) << 4)) - m1;
          out[y + 64 * g + 32 + l] = d2 * ((q >> 4) + (((hb >> (2 * g + 1)) & 1) << 4)) - m2;
        }
      }
    }
  },
  Q6_K(src, out, n) {
    const t = f16Table();
    for (let b = 0; b < n / 256; b++) {
      const at = b * 210;
      const d = h(src, at + 208, t);
      for (let half = 0; half < 2; half++) {
        const ql = at + 64 * half;
        const qh = at + 128 + 32 * half;
        const sc = at + 192 + 8 * half;
        const y = b * 256 + 128 * half;
        for (let l = 0; l < 32; l++) {
          const is = l >> 4;
          const hb = src[qh + l];
          const q1 = ((src[ql + l] & 0xf) | ((hb & 3) << 4)) - 32;
          const q2 = ((src[ql + l + 32] & 0xf) | (((hb >> 2) & 3) << 4)) - 32;
          const q3 = ((src[ql + l] >> 4) | (((hb >> 4) & 3) << 4)) - 32;
          const q4 = ((src[ql + l + 32] >> 4) | (((hb >> 6) & 3) << 4)) - 32;
          const s = (i: number) => (src[sc + i] << 24) >> 24;
          out[y + l] = d * s(is) * q1;
          out[y + l + 32] = d * s(is + 2) * q2;
          out[y + l + 64] = d * s(is + 4) * q3;
          out[y + l + 96] = d * s(is + 6) * q4;
        }
      }
    }
  },
};

/** The 8 six-bit scales and mins of a Q4_K/Q5_K super-block, unpacked from its 12 bytes at `at`. */
function kScales(src: Uint8Array, at: number, sc: Uint8Array, mn: Uint8Array): void {
  for (let j = 0; j < 8; j++) {
    if (j < 4) {
      sc[j] = src[at + j] & 63;
      mn[j] = src[at + j + 4] & 63;
    } else {
      sc[j] = (src[at + j + 4] & 0xf) | ((src[at + j - 4] >> 6) << 4);
      mn[j] = (src[at + j + 4] >> 4) | ((src[at + j] >> 6) << 4);
    }
  }
}

/** Quantizes float32 values (a multiple of 32) to Q8_0 blocks: per block d = max|x|/127 (f16), q = round(x/d). */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  const blocks = x.length / 32;
  const out = new Uint8Array(blocks * 34);
  for (let b = 0; b < blocks; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]));
    const d = amax / 127;
    const id = d ? 1 / d : 0;
    const bits = toF16Bits(d);
    out[b * 34] = bits & 0xff;
    out[b * 34 + 1] = bits >> 8;
    for (let j = 0; j < 32; j++) {
      const v = x[b * 32 + j] * id;
      out[b * 34 + 2 + j] = (Math.sign(v) * Math.round(Math.abs(v))) & 0xff;
    }
  }
  return out;
}

/** Quantizes float32 values (a multiple of 32) to Q4_0 blocks: d = (value of largest magnitude)/−8, q = x/d + 8 clamped to 0..15. */
export function quantizeQ4_0(x: Float32Array): Uint8Array {
  const blocks = x.length / 32;
  const out = new Uint8Array(blocks * 18);
  for (let b = 0; b < blocks; b++) {
    let amax = 0, max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[b * 32 + j];
      if (Math.abs(v) > amax) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = max / -8;
    const id = d ? 1 / d : 0;
    const bits = toF16Bits(d);
    out[b * 18] = bits & 0xff;
    out[b * 18 + 1] = bits >> 8;
    for (let j = 0; j < 16; j++) {
      const q0 = Math.min(15, Math.trunc(x[b * 32 + j] * id + 8.5));
      const q1 = Math.min(15, Math.trunc(x[b * 32 + j + 16] * id + 8.5));
      out[b * 18 + 2 + j] = q0 | (q1 << 4);
    }
  }
  return out;
}
