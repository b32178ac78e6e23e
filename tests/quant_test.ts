/**
 * Block quantization against a brute-force restatement: every value must come
 * back as the nearest of its block's 2^bits levels (found by trying them all),
 * within half a step of the value for values inside the block's range; the
 * packed layout read back nibble by nibble as MatMulNBits defines it; GGUF-style
 * signed blocks taken over without re-quantization.
 */
import assert from "node:assert/strict";
import { dequantizeBlocks, fromSignedBlocks, quantizeBlocks, type QuantSpec } from "../kernels/quant.ts";
import { rng } from "./helpers.ts";

/** A matrix with a spread of magnitudes per row, exact zeros, all-zero blocks and one-signed blocks. */
function matrix(rows: number, cols: number, seed: number): Float32Array {
  const r = rng(seed);
  const w = new Float32Array(rows * cols);
  for (let i = 0; i < w.length; i++) {
    const row = Math.floor(i / cols);
    const col = i % cols;
    if (row === 0 && col < 40) w[i] = 0; // an all-zero block (and a partly zero one)
    else if (row === 1) w[i] = 0.5 + r(); // all positive
    else if (row === 2) w[i] = -3 * r(); // all negative
    else w[i] = (r() - 0.5) * 2 ** (row % 7 - 3);
  }
  return w;
}

/** Value `i` of `bits`-wide unsigned values packed as MatMulNBits packs them (low nibble first). */
function unpack(bytes: Uint8Array, i: number, bits: number): number {
  return bits === 8 ? bytes[i] : (bytes[i >> 1] >> (4 * (i & 1))) & 15;
}

const SPECS: QuantSpec[] = [
  { bits: 8, block: 32, symmetric: true },
  { bits: 8, block: 64, symmetric: false },
  { bits: 4, block: 32, symmetric: true },
  { bits: 4, block: 16, symmetric: false },
  { bits: 4, block: 128, symmetric: false },
];

for (const spec of SPECS) {
  Deno.test(`block quantization ${JSON.stringify(spec)}: nearest level, half a step, MatMulNBits layout`, () => {
    const rows = 9, cols = 100; // 100 is not a multiple of any block: the last block is padded
    const w = matrix(rows, cols, spec.block + spec.bits);
    const q = quantizeBlocks(w, rows, cols, spec);
    const back = dequantizeBlocks(q);
    const nb = Math.ceil(cols / spec.block);
    const half = 2 ** (spec.bits - 1);
    const zpBytes = Math.ceil((nb * spec.bits) / 8);
    assert.equal(q.data.length, (rows * nb * spec.block * spec.bits) / 8);
    assert.equal(q.scales.length, rows * nb);
    assert.equal(q.zeroPoints?.length, spec.symmetric ? undefined : rows * zpBytes);
    for (let r = 0; r < rows; r++) {
      for (let b = 0; b < nb; b++) {
        const scale = q.scales[r * nb + b];
        const zero = q.zeroPoints ? unpack(q.zeroPoints.subarray(r * zpBytes), b, spec.bits) : half;
        const vals = Array.from(w.subarray(r * cols + b * spec.block, r * cols + Math.min(cols, (b + 1) * spec.block)));
        const lo = Math.min(0, ...vals), hi = Math.max(0, ...vals);
        // the scale covers the block: symmetric max|w| over 2^(bits−1) − 1 steps, asymmetric (max − min) over 2^bits − 1
        const expectScale = spec.symmetric ? Math.max(hi, -lo) / (half - 1) : (hi - lo) / (2 ** spec.bits - 1);
        assert.ok(Math.abs(scale - expectScale) <= 1e-6 * Math.abs(expectScale), `row ${r} block ${b} scale`);
        vals.forEach((v, i) => {
          const col = b * spec.block + i;
          const stored = unpack(q.data, (r * nb + b) * spec.block + i, spec.bits);
          const value = (stored - zero) * scale;
          assert.equal(back[r * cols + col], Math.fround(value), `dequantized ${r},${col}`);
          // brute force: no level of this block is nearer to v
          let best = Infinity;
          for (let level = 0; level < 2 ** spec.bits; level++) {
            best = Math.min(best, Math.abs((level - zero) * scale - v));
          }
          assert.ok(Math.abs(value - v) <= best + 1e-6 * Math.abs(scale), `${r},${col}: not the nearest level`);
          // inside the block's range the nearest level is at most half a step away (the asymmetric grid is
          // shifted by the rounding of its zero point, up to half a step, so its ends may be a step away)
          const bound = spec.symmetric ? scale / 2 : scale;
          assert.ok(Math.abs(value - v) <= bound * (1 + 1e-6) + 1e-12, `${r},${col}: error ${Math.abs(value - v)}`);
        });
        // padding quantizes zeros: the stored level of a padded column is the zero point
        for (let i = cols - b * spec.block; i < spec.block; i++) {
          assert.equal(unpack(q.data, (r * nb + b) * spec.block + i, spec.bits), zero, "padding is zero");
        }
      }
    }
  });
}

Deno.test("asymmetric blocks represent zero exactly and a one-signed block uses the whole range", () => {
  const w = matrix(9, 100, 3);
  const q = quantizeBlocks(w, 9, 100, { bits: 4, block: 32, symmetric: false });
  const back = dequantizeBlocks(q);
  for (let i = 0; i < w.length; i++) if (w[i] === 0) assert.equal(back[i], 0);
  // row 1 is all positive: the zero point is 0, its largest value the top level
  const r1 = Array.from(w.subarray(100, 132));
  assert.ok(Math.abs(Math.max(...r1) - Math.max(...back.subarray(100, 132))) < 1e-6);
});

Deno.test("GGUF Q8_0 / Q4_0 signed blocks go in unchanged: value × scale", () => {
  const r = rng(5);
  for (const bits of [8, 4] as const) {
    const rows = 3, cols = 64, half = 2 ** (bits - 1);
    const values = Int8Array.from({ length: rows * cols }, () => Math.floor(r() * 2 * half) - half);
    const scales = Float32Array.from({ length: rows * 2 }, () => r() * 0.01);
    const back = dequantizeBlocks(fromSignedBlocks(values, scales, rows, cols, bits));
    for (let i = 0; i < values.length; i++) {
      const s = scales[Math.floor(i / cols) * 2 + Math.floor((i % cols) / 32)];
      assert.equal(back[i], Math.fround(values[i] * s));
    }
  }
});

Deno.test("quantization rejects what MatMulNBits cannot run", () => {
  // a 4-bit signed value outside [−8, 7]
  assert.throws(() => fromSignedBlocks(Int8Array.of(8, ...new Array(31).fill(0)), Float32Array.of(1), 1, 32, 4));
  const w = new Float32Array(64);
  assert.throws(() => quantizeBlocks(w, 1, 64, { bits: 4, block: 24, symmetric: true }));
  assert.throws(() => quantizeBlocks(w, 1, 64, { bits: 4, block: 8, symmetric: true }));
  assert.throws(() => quantizeBlocks(w, 2, 64, { bits: 8, block: 32, symmetric: true }));
});
