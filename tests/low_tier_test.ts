/**
 * MiKV's two-tier attention in the decoder graph (core/model/onnx/low_tier.ts)
 * against the reference forward fed, per KV head, [dequantized low entries ;
 * high entries] as one past: logits, new K/V, the statistics of both tiers
 * and the queries' channel maxima, at int4 and int2, float32 and float16
 * caches, with per-head lengths that mask slots in both tiers. The low tier
 * reaches the graph packed (`kernels/kv_quant.ts`), its keys balanced (k / b),
 * and the reference sees what the kernel's dequantization gives back times b.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { graphFor } from "../core/model/cache.ts";
import { type Checkpoint, openCheckpoint } from "../core/model/checkpoint.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../core/model/onnx/decoder.ts";
import { STATS } from "../core/model/onnx/stats.ts";
import { forward, loadWeights, type Weights } from "../core/model/reference.ts";
import { type KvArray, type LowPast, ModelSession } from "../core/model/session.ts";
import { dequantizeRows, type KvQuantSpec, quantizeRows } from "../kernels/kv_quant.ts";
import { f16ToF32, f32ToF16 } from "../kernels/fp16.ts";
import { normals } from "../kernels/random.ts";
import { bruteForceStats, makeTinyModels, maxAbsDiff } from "./model_fixtures.ts";
import { rng } from "./helpers.ts";
import type { LowTier } from "../core/model/onnx/low_tier.ts";

const root = await Deno.makeTempDir({ prefix: "tome-low-tier-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const TOL = 1e-4;

interface Loaded {
  ckpt: Checkpoint;
  weights: Weights;
}
const loaded = new Map<string, Loaded>();
async function load(name: string): Promise<Loaded> {
  let m = loaded.get(name);
  if (!m) {
    const ckpt = await openCheckpoint(models.get(name)!);
    loaded.set(name, m = { ckpt, weights: await loadWeights(ckpt) });
  }
  return m;
}

async function open(m: Loaded, o: Partial<GraphOptions>): Promise<ModelSession> {
  const opts = { ...DEFAULT_GRAPH_OPTIONS, logits: "all" as const, ...o };
  return await ModelSession.open(m.ckpt.config, opts, (await graphFor(m.ckpt, opts)).path);
}

/** Both tiers of one layer: what the graph is fed and what the reference sees, per head. */
interface Tiers {
  low: LowPast;
  high: { keys: KvArray[]; values: KvArray[]; lengths: number[] };
  /** Per layer and head, the float32 rows the graph should attend to: [low valid ; high valid]. */
  refKeys: Float32Array[][];
  refValues: Float32Array[][];
}

function makeTiers(m: Loaded, tier: LowTier, kvDtype: "float32" | "float16", seed: number): Tiers {
  const { layers, kvHeads: K, headDim: d } = m.ckpt.config;
  const r = rng(seed);
  const spec: KvQuantSpec = { bits: tier === "int4" ? 4 : 2, group: d / 2, params: kvDtype };
  const Q = 5;
  const P = 6;
  const lowLengths = Array.from({ length: layers * K }, (_, i) => [5, 3, 0, 4][i % 4]);
  const highLengths = Array.from({ length: layers * K }, (_, i) => [6, 2, 5, 0][(i + 1) % 4]);
  const low: LowPast = { keys: [], values: [], balance: [], lengths: lowLengths };
  const high: Tiers["high"] = { keys: [], values: [], lengths: highLengths };
  const refKeys: Float32Array[][] = [];
  const refValues: Float32Array[][] = [];
  for (let l = 0; l < layers; l++) {
    // keys with an outlier channel, the balancer drawn in [0.5, 2)
    const k = normals(r, K * Q * d).map((x, i) => x * (i % d === 3 ? 8 : 1));
    const v = normals(r, K * Q * d);
    const b = new Float32Array(K * d).map(() => 0.5 + 1.5 * r());
    const balanced = k.map((x, i) => x / b[Math.floor(i / (Q * d)) * d + (i % d)]);
    const qk = quantizeRows(balanced, K * Q, d, spec);
    const qv = quantizeRows(v, K * Q, d, spec);
    low.keys.push({ data: qk.data, scales: qk.scales, mins: qk.mins });
    low.values.push({ data: qv.data, scales: qv.scales, mins: qv.mins });
    low.balance.push(b);
    const dk = dequantizeRows(qk).map((x, i) => Math.fround(x * b[Math.floor(i / (Q * d)) * d + (i % d)]));
    const dv = dequantizeRows(qv);
    const hk = normals(r, K * P * d);
    const hv = normals(r, K * P * d);
    const hk16 = f32ToF16(hk);
    const hv16 = f32ToF16(hv);
    high.keys.push(kvDtype === "float32" ? hk : hk16);
    high.values.push(kvDtype === "float32" ? hv : hv16);
    const hkSeen = kvDtype === "float32" ? hk : f16ToF32(hk16);
    const hvSeen = kvDtype === "float32" ? hv : f16ToF32(hv16);
    const rows = (lowRows: Float32Array, highRows: Float32Array, h: number) => {
      const nl = lowLengths[l * K + h];
      const nh = highLengths[l * K + h];
      const out = new Float32Array((nl + nh) * d);
      out.set(lowRows.subarray(h * Q * d, (h * Q + nl) * d));
      out.set(highRows.subarray(h * P * d, (h * P + nh) * d), nl * d);
      return out;
    };
    refKeys.push(Array.from({ length: K }, (_, h) => rows(dk, hkSeen, h)));
    refValues.push(Array.from({ length: K }, (_, h) => rows(dv, hvSeen, h)));
  }
  return { low, high, refKeys, refValues };
}

/** Runs the two-tier graph and the reference on [low ; high]; asserts every output agrees. */
async function compareTiers(name: string, tier: LowTier, kvDtype: "float32" | "float16") {
  const m = await load(name);
  const c = m.ckpt.config;
  const { layers, kvHeads: K, heads: H, headDim: d } = c;
  const session = await open(m, { lowTier: tier, kvDtype });
  try {
    const t = makeTiers(m, tier, kvDtype, 17 + layers);
    const ids = [3, 14, 15, 9, 2, 6, 5];
    const S = ids.length;
    const positions = ids.map((_, i) => 30 + i);
    const windowStart = 4;
    const r = await session.run({
      ids,
      positions,
      past: { keys: t.high.keys, values: t.high.values, lengths: t.high.lengths },
      low: t.low,
      windowStart,
      fetch: { stats: [...STATS], queryAbsMax: true },
    });
    // the reference: per head [low ; high], padded to the longest
    let Pref = 0;
    for (const heads of t.refKeys) for (const rows of heads) Pref = Math.max(Pref, rows.length / d);
    const e = forward(c, m.weights, ids, positions, {
      length: Pref,
      layers: t.refKeys.map((heads, l) => {
        const keys = new Float32Array(K * Pref * d);
        const values = new Float32Array(K * Pref * d);
        for (let h = 0; h < K; h++) {
          keys.set(heads[h], h * Pref * d);
          values.set(t.refValues[l][h], h * Pref * d);
        }
        return { keys, values };
      }),
      lengths: t.refKeys.map((heads) => heads.map((rows) => rows.length / d)),
    });
    const worst = { logits: maxAbsDiff(r.logits!, e.logits), kv: 0, stats: 0, low: 0, qmax: 0 };
    const T = Pref + S;
    for (let l = 0; l < layers; l++) {
      // new K/V: a float16 cache holds them rounded, within half a float16 step (2^−11 relative) of the reference
      const kvErr = (a: KvArray, want: Float32Array) => {
        const got = a instanceof Uint16Array ? f16ToF32(a) : a;
        const step = a instanceof Uint16Array ? 2 ** -11 : 0;
        let m = 0;
        for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(got[i] - want[i]) - step * Math.abs(want[i]));
        return m;
      };
      worst.kv = Math.max(worst.kv, kvErr(r.newKeys[l], e.newKeys[l]), kvErr(r.newValues[l], e.newValues[l]));
      const brute = bruteForceStats(e.probs[l], H, K, S, T, windowStart);
      const P = t.high.keys[l].length / (K * d);
      const Q = t.low.keys[l].data.length / (K * (d * (tier === "int4" ? 4 : 2)) / 8);
      for (const s of STATS) {
        // the high tier and new entries: [K, P + S]; masked slots receive 0
        const want = new Float32Array(K * (P + S));
        const wantLow = new Float32Array(K * Q);
        for (let h = 0; h < K; h++) {
          const nl = t.low.lengths[l * K + h];
          const nh = t.high.lengths[l * K + h];
          for (let p = 0; p < nh; p++) want[h * (P + S) + p] = brute[s][h * T + nl + p];
          for (let i = 0; i < S; i++) want[h * (P + S) + P + i] = brute[s][h * T + Pref + i];
          for (let j = 0; j < nl; j++) wantLow[h * Q + j] = brute[s][h * T + j];
        }
        worst.stats = Math.max(worst.stats, maxAbsDiff(r.stats[s]![l], want));
        worst.low = Math.max(worst.low, maxAbsDiff(r.lowStats![s]![l], wantLow));
      }
      // max |q_i| of each KV head's query group over the chunk, from the reference's rotated queries [S, H, d]
      const qmax = new Float32Array(K * d);
      for (let s = 0; s < S; s++) {
        for (let h = 0; h < H; h++) {
          const kv = Math.floor(h / (H / K));
          for (let i = 0; i < d; i++) {
            qmax[kv * d + i] = Math.max(qmax[kv * d + i], Math.abs(e.queries[l][(s * H + h) * d + i]));
          }
        }
      }
      worst.qmax = Math.max(worst.qmax, maxAbsDiff(r.queryAbsMax![l], qmax));
    }
    console.log(`${name} ${tier} ${kvDtype}: max |Δ| ${JSON.stringify(worst)}`);
    for (const [what, v] of Object.entries(worst)) assert.ok(v < TOL, `${what} differ by ${v}`);
  } finally {
    await session.close();
  }
}

for (
  const [name, tier, kvDtype] of [
    ["llama", "int4", "float32"],
    ["llama", "int2", "float16"],
    ["qwen3", "int2", "float32"],
    ["mistral", "int4", "float16"],
  ] as const
) {
  Deno.test(`low tier ${name} ${tier} ${kvDtype}: two-tier attention matches the reference over [low ; high]`, () =>
    compareTiers(name, tier, kvDtype));
}

Deno.test("low tier: a graph with an empty low tier computes what the graph without one computes", async () => {
  const m = await load("llama");
  const { layers, kvHeads: K, headDim: d } = m.ckpt.config;
  const plain = await open(m, {});
  const tiered = await open(m, { lowTier: "int4" });
  try {
    const r = rng(4);
    const P = 4;
    const past = {
      keys: Array.from({ length: layers }, () => normals(r, K * P * d)),
      values: Array.from({ length: layers }, () => normals(r, K * P * d)),
      lengths: new Array(layers * K).fill(3),
    };
    const req = { ids: [1, 2, 3], positions: [7, 8, 9], past, fetch: { stats: [...STATS] } };
    const a = await plain.run(req);
    const b = await tiered.run(req);
    assert.ok(maxAbsDiff(a.logits!, b.logits!) < 1e-6);
    for (const s of STATS) {
      for (let l = 0; l < layers; l++) {
        assert.ok(maxAbsDiff(a.stats[s]![l], b.stats[s]![l]) < 1e-6);
        assert.equal(b.lowStats![s]![l].length, 0);
      }
    }
  } finally {
    await plain.close();
    await tiered.close();
  }
});

Deno.test("low tier: refused with compact positions", async () => {
  const m = await load("llama");
  await assert.rejects(() => open(m, { lowTier: "int2", positions: "compact" }), /original positions/);
});
