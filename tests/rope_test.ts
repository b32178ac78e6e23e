/**
 * The RoPE tables the session feeds the graph (`ropeTables`) against
 * restatements: each pair (i, i + d/2) of a head rotated by the angle
 * position·θ_i as a 2×2 rotation matrix in float64, the reference's own
 * `rotate` bit for bit, and RoPE's defining property (a query–key dot product
 * depends only on the positions' difference).
 */
import assert from "node:assert/strict";
import { inverseFrequencies, ropeTables, rotate } from "../core/model/rope.ts";
import { rng } from "./helpers.ts";

const CONFIGS = [
  { headDim: 8, ropeTheta: 10000, ropeScaling: null },
  {
    headDim: 64,
    ropeTheta: 500000,
    ropeScaling: {
      type: "llama3" as const,
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositions: 8192,
    },
  },
];

/** x rotated with the tables' row p, rotate-half convention: x·cos + rotate_half(x)·sin, in float64. */
function applyRow(x: Float32Array, cos: Float32Array, sin: Float32Array, p: number): Float64Array {
  const d = x.length, half = d / 2;
  const out = new Float64Array(d);
  for (let j = 0; j < d; j++) {
    const rotated = j < half ? -x[j + half] : x[j - half];
    out[j] = x[j] * cos[p * d + j] + rotated * sin[p * d + j];
  }
  return out;
}

/** Brute force: pair (i, i + d/2) times the rotation matrix of angle pos·θ_i, all in float64. */
function rotationMatrices(x: Float32Array, pos: number, inv: Float32Array): Float64Array {
  const half = inv.length;
  const out = new Float64Array(2 * half);
  for (let i = 0; i < half; i++) {
    const a = pos * inv[i];
    out[i] = Math.cos(a) * x[i] - Math.sin(a) * x[i + half];
    out[i + half] = Math.sin(a) * x[i] + Math.cos(a) * x[i + half];
  }
  return out;
}

const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
};

Deno.test("rope tables = 2×2 rotations of each pair, = the reference's rotate bit for bit", () => {
  const r = rng(11);
  for (const c of CONFIGS) {
    const d = c.headDim;
    const inv = inverseFrequencies(c);
    const positions = [0, 1, 2, 7, 100, 1023, 4095, 3];
    const { cos, sin } = ropeTables(positions, inv);
    assert.equal(cos.length, positions.length * d);
    assert.equal(sin.length, positions.length * d);
    positions.forEach((pos, p) => {
      const x = Float32Array.from({ length: d }, () => r() - 0.5);
      const got = applyRow(x, cos, sin, p);
      // float32 angles and values: within a few float32 ulps of the angle (|angle| < 4096)
      const want = rotationMatrices(x, pos, inv);
      for (let j = 0; j < d; j++) assert.ok(Math.abs(got[j] - want[j]) < 1e-3, `${d}: pos ${pos}, column ${j}`);
      // the reference forward's rotation, rounded to float32 as it stores it
      const ref = x.slice();
      rotate(ref, 0, pos, inv);
      assert.deepEqual(Float32Array.from(got), ref, `pos ${pos}: not the reference's rotation`);
    });
    assert.equal(ropeTables([], inv).cos.length, 0);
  }
});

Deno.test("rope tables: a rotated query·key depends only on the positions' difference", () => {
  const r = rng(12);
  const inv = inverseFrequencies(CONFIGS[1]);
  const d = CONFIGS[1].headDim;
  const q = Float32Array.from({ length: d }, () => r() - 0.5);
  const k = Float32Array.from({ length: d }, () => r() - 0.5);
  const positions = [5, 2, 305, 302, 1005, 1002];
  const { cos, sin } = ropeTables(positions, inv);
  const score = (pq: number, pk: number) => dot(applyRow(q, cos, sin, pq), applyRow(k, cos, sin, pk));
  const base = score(0, 1);
  assert.ok(Math.abs(score(2, 3) - base) < 1e-3 && Math.abs(score(4, 5) - base) < 1e-3);
  // and does depend on it: swapping the two positions changes the score
  assert.ok(Math.abs(score(1, 0) - base) > 1e-3);
});
