/**
 * The low tier's quantization (kernels/kv_quant.ts, MiKV arXiv 2402.18096)
 * against brute-force restatements: every value decodes to the nearest of its
 * group's 2^bits levels (found by trying them all), within half a step; the
 * parameters cover the group's range; values on the levels come back exactly
 * with the level they were made from; the packing read back bit by bit; and
 * the balancer's defining property (balanced channel maxima, q·k unchanged).
 */
import assert from "node:assert/strict";
import {
  allocRows,
  balanceFactors,
  balanceKeys,
  channelAbsMax,
  dequantizeRows,
  type KvQuantSpec,
  quantizeRows,
  quantizeRowsInto,
} from "../kernels/kv_quant.ts";
import { fromF16Bits } from "../kernels/fp16.ts";
import { rng } from "./helpers.ts";

const SPECS: KvQuantSpec[] = [
  { bits: 4, group: 32, params: "float32" },
  { bits: 4, group: 16, params: "float16" },
  { bits: 2, group: 32, params: "float32" },
  { bits: 2, group: 8, params: "float16" },
  { bits: 4, group: 64, params: "float16" },
];

/** Rows with a spread of magnitudes, a constant row, one-signed rows and an outlier channel. */
function rowsOf(rows: number, d: number, seed: number): Float32Array {
  const r = rng(seed);
  const x = new Float32Array(rows * d);
  for (let i = 0; i < x.length; i++) {
    const row = Math.floor(i / d);
    if (row === 0) x[i] = 0.75; // constant: step 0
    else if (row === 1) x[i] = 1 + r(); // all positive
    else if (row === 2) x[i] = -4 * r(); // all negative
    else x[i] = (r() - 0.5) * 2 ** (row % 9 - 4) * (i % d === 5 ? 20 : 1);
  }
  return x;
}

/** Parameter `p` as a number. */
const param = (a: Float32Array | Uint16Array, p: number, spec: KvQuantSpec) =>
  spec.params === "float16" ? fromF16Bits(a[p]) : a[p];

/** Value i of a row read by bit index: bits i·b .. i·b + b − 1 of the row, least significant first. */
function unpackBits(data: Uint8Array, rowStart: number, i: number, bits: number): number {
  let v = 0;
  for (let j = 0; j < bits; j++) {
    const bit = i * bits + j;
    v |= ((data[rowStart + (bit >> 3)] >> (bit & 7)) & 1) << j;
  }
  return v;
}

for (const spec of SPECS) {
  const name = `int${spec.bits} group ${spec.group} ${spec.params}`;
  Deno.test(`kv quant ${name}: each value decodes to its group's nearest level, within half a step`, () => {
    const d = 64;
    const rows = 24;
    const x = rowsOf(rows, d, 7 + spec.bits + spec.group);
    const q = quantizeRows(x, rows, d, spec);
    const back = dequantizeRows(q);
    const levels = 2 ** spec.bits - 1;
    const groups = d / spec.group;
    let worst = 0;
    for (let r = 0; r < rows; r++) {
      for (let gi = 0; gi < groups; gi++) {
        const s = param(q.scales, r * groups + gi, spec);
        const m = param(q.mins, r * groups + gi, spec);
        const vals = Array.from(x.subarray(r * d + gi * spec.group, r * d + (gi + 1) * spec.group));
        const lo = Math.min(...vals);
        const hi = Math.max(...vals);
        // the levels cover the group's range
        assert.ok(m <= lo, `row ${r} group ${gi}: min ${m} above ${lo}`);
        assert.ok(m + levels * s >= hi - 1e-6 * Math.abs(hi), `row ${r} group ${gi}: top level below ${hi}`);
        // and are no wider than needed: float32 parameters exact to rounding, float16 ones one rounding away
        const ulp = spec.params === "float16" ? 2 ** -10 : 2 ** -23;
        assert.ok(m >= lo - Math.abs(lo) * ulp - 2 ** -24, `row ${r} group ${gi}: min ${m} far below ${lo}`);
        assert.ok(s <= ((hi - m) / levels) * (1 + ulp) + 2 ** -24, `row ${r} group ${gi}: step ${s} too wide`);
        for (let i = 0; i < spec.group; i++) {
          const v = vals[i];
          const got = back[r * d + gi * spec.group + i];
          // brute force: the nearest level
          let best = Infinity;
          for (let j = 0; j <= levels; j++) best = Math.min(best, Math.abs(Math.fround(Math.fround(j * s) + m) - v));
          const err = Math.abs(got - v);
          assert.ok(err <= best + 1e-6 * (Math.abs(v) + Math.abs(m)), `row ${r} ch ${i}: ${got} for ${v}`);
          assert.ok(err <= s / 2 + 1e-6 * (Math.abs(v) + Math.abs(m)), `row ${r} ch ${i}: ${err} > step/2 ${s / 2}`);
          if (s > 0) worst = Math.max(worst, err / s);
        }
      }
    }
    assert.ok(worst <= 0.5 + 1e-4, `worst error ${worst} steps`);
  });

  Deno.test(`kv quant ${name}: values on the levels come back exactly, with their level in the packed bits`, () => {
    const d = 64;
    const rows = 12;
    const r = rng(99 + spec.bits);
    const levels = 2 ** spec.bits - 1;
    const want = new Uint8Array(rows * d);
    const x = new Float32Array(rows * d);
    for (let row = 0; row < rows; row++) {
      // a min and step exact in float16 (a power of two times a small integer)
      const m = -Math.floor(r() * 64) / 16;
      const s = 2 ** -(row % 5);
      for (let i = 0; i < d; i++) {
        const inGroup = i % spec.group;
        const j = inGroup === 0 ? 0 : inGroup === 1 ? levels : Math.floor(r() * (levels + 1));
        want[row * d + i] = j;
        x[row * d + i] = m + j * s;
      }
    }
    const q = quantizeRows(x, rows, d, spec);
    assert.deepEqual(dequantizeRows(q), x);
    const bytes = (d * spec.bits) / 8;
    for (let row = 0; row < rows; row++) {
      for (let i = 0; i < d; i++) assert.equal(unpackBits(q.data, row * bytes, i, spec.bits), want[row * d + i]);
    }
  });
}

Deno.test("kv quant: rows written into a buffer at an offset match rows quantized alone, neighbours untouched", () => {
  const spec: KvQuantSpec = { bits: 2, group: 16, params: "float16" };
  const d = 32;
  const x = rowsOf(10, d, 3);
  const whole = quantizeRows(x, 10, d, spec);
  const buf = allocRows(16, d, spec);
  buf.data.fill(0xff);
  quantizeRowsInto(x, 4, 6, buf, 9); // rows 4..9 of x into slots 9..14
  const part = quantizeRows(x.subarray(4 * d), 6, d, spec);
  const bytes = (d * 2) / 8;
  assert.deepEqual(buf.data.subarray(9 * bytes, 15 * bytes), part.data);
  assert.deepEqual(buf.data.subarray(9 * bytes, 15 * bytes), whole.data.subarray(4 * bytes, 10 * bytes));
  assert.ok(buf.data.subarray(0, 9 * bytes).every((b) => b === 0xff));
  assert.ok(buf.data.subarray(15 * bytes).every((b) => b === 0xff));
  assert.deepEqual(buf.scales.subarray(18, 30), whole.scales.subarray(8, 20));
});

Deno.test("kv quant: a group that does not divide the head dimension is refused", () => {
  assert.throws(() => quantizeRows(new Float32Array(24), 1, 24, { bits: 4, group: 16, params: "float32" }));
  assert.throws(() => quantizeRows(new Float32Array(6), 2, 3, { bits: 2, group: 3, params: "float32" }));
});

Deno.test("balancer: balanced channels have equal maxima, q·k is unchanged, dead channels keep 1", () => {
  const d = 16;
  const S = 20;
  const r = rng(5);
  const q = new Float32Array(S * d).map((_, i) => (r() - 0.5) * (i % d === 3 ? 30 : 1));
  const k = new Float32Array(S * d).map((_, i) => (r() - 0.5) * (i % d === 7 ? 50 : 1) * (i % d === 9 ? 0 : 1));
  const qMax = channelAbsMax(q, S, d);
  const kMax = channelAbsMax(k, S, d);
  // brute-force maxima
  for (let i = 0; i < d; i++) {
    let m = 0;
    for (let s = 0; s < S; s++) m = Math.max(m, Math.abs(k[s * d + i]));
    assert.equal(kMax[i], m);
  }
  const b = balanceFactors(qMax, kMax);
  assert.equal(b[9], 1); // a dead key channel
  const kb = balanceKeys(k, S, b);
  const qb = q.map((v, i) => v * b[i % d]);
  const kbMax = channelAbsMax(kb, S, d);
  const qbMax = channelAbsMax(qb, S, d);
  for (let i = 0; i < d; i++) {
    if (i === 9) continue;
    assert.ok(Math.abs(kbMax[i] - qbMax[i]) <= 1e-5 * qbMax[i], `channel ${i}: ${kbMax[i]} vs ${qbMax[i]}`);
  }
  for (let s = 0; s < S; s++) {
    for (let t = 0; t < S; t++) {
      let dot = 0;
      let dotB = 0;
      for (let i = 0; i < d; i++) {
        dot += q[s * d + i] * k[t * d + i];
        dotB += qb[s * d + i] * kb[t * d + i];
      }
      assert.ok(Math.abs(dot - dotB) <= 1e-4 * (1 + Math.abs(dot)));
    }
  }
});

Deno.test("balancer: with an outlier key channel, int2 keys give q·k closer to exact when balanced", () => {
  const d = 32;
  const S = 64;
  const r = rng(11);
  const q = new Float32Array(S * d).map(() => r() - 0.5);
  const k = new Float32Array(S * d).map((_, i) => (r() - 0.5) * (i % d === 4 ? 40 : 1));
  const spec: KvQuantSpec = { bits: 2, group: 32, params: "float32" };
  const b = balanceFactors(channelAbsMax(q, S, d), channelAbsMax(k, S, d));
  const plain = dequantizeRows(quantizeRows(k, S, d, spec));
  const balanced = dequantizeRows(quantizeRows(balanceKeys(k, S, b), S, d, spec));
  let errPlain = 0;
  let errBalanced = 0;
  for (let s = 0; s < S; s++) {
    for (let t = 0; t < S; t++) {
      let exact = 0;
      let a = 0;
      let c = 0;
      for (let i = 0; i < d; i++) {
        exact += q[s * d + i] * k[t * d + i];
        a += q[s * d + i] * plain[t * d + i];
        c += q[s * d + i] * b[i] * balanced[t * d + i];
      }
      errPlain += (a - exact) ** 2;
      errBalanced += (c - exact) ** 2;
    }
  }
  assert.ok(errBalanced < errPlain / 2, `balanced ${errBalanced} vs plain ${errPlain}`);
});
