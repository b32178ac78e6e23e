/**
 * MiKV in the engine (core/engine/demote.ts, low_store.ts, sequence.ts): a
 * chunked read with H2O and a low tier, checked after every chunk against a
 * restatement: what the high tier stopped holding (retained or new) is in the
 * low tier unless the low budget dropped it, the low tier holds the
 * candidates with the most accumulated attention (its own statistic added
 * every run), each low row decodes to the entry's own K/V quantized alone
 * (keys balanced), and the balancer comes from the first chunk's query maxima
 * and new keys.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../core/model/onnx/decoder.ts";
import { ModelSession } from "../core/model/session.ts";
import { KvStore } from "../core/engine/kv_store.ts";
import { LowStore } from "../core/engine/low_store.ts";
import { Sequence } from "../core/engine/sequence.ts";
import { planBudgets } from "../core/engine/plan.ts";
import { Meter } from "../core/meter/meter.ts";
import { h2o } from "../core/policies/h2o.ts";
import { balanceFactors, balanceKeys, dequantizeRows, type KvQuantSpec, quantizeRows } from "../kernels/kv_quant.ts";
import { makeTinyModels } from "./model_fixtures.ts";
import { generate, loadModel, read } from "../core/mod.ts";
import { predictKv } from "../core/engine/estimate.ts";
import { patchTokens, resolveRun } from "../core/engine/resolve.ts";
import { TomeError } from "../core/errors.ts";
import { rng } from "./helpers.ts";

const root = await Deno.makeTempDir({ prefix: "tome-low-engine-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));

interface Cand {
  pos: number;
  mass: number;
  key: Float32Array;
  value: Float32Array;
}

Deno.test("low tier engine: evicted entries move to the low tier, which keeps the most attended", async () => {
  const ckpt = await openCheckpoint(models.get("llama")!);
  const c = ckpt.config;
  const { layers: L, kvHeads: K, headDim: d } = c;
  const opts: GraphOptions = { ...DEFAULT_GRAPH_OPTIONS, lowTier: "int4" };
  const session = await ModelSession.open(c, opts, (await graphFor(ckpt, opts)).path);
  try {
    const spec: KvQuantSpec = { bits: 4, group: d / 2, params: "float32" };
    const lowBudget = 7;
    const low = new LowStore(c, spec, () => lowBudget);
    const seq = new Sequence(session, new KvStore(c, "float32"), new Meter(0), low);
    const plan = planBudgets(h2o, { layers: L }, { budget: 8, sinks: 1, recent: 2 });
    const r = rng(8);
    /** Per layer and head, the dequantized rows each low entry must decode to, by position. */
    const expectRows = new Map<string, { key: Float32Array; value: Float32Array }>();
    const chunk = 6;
    let demoted = 0;
    let promoted = 0;
    for (let step = 0; step < 6; step++) {
      const ids = Array.from({ length: chunk }, () => Math.floor(r() * c.vocab));
      // the state before the step
      const before = seq.store.layers.map((x) => ({
        cap: x.capacity,
        lengths: x.lengths.slice(),
        positions: x.positions.slice(),
        accumulated: x.accumulated.slice(),
        keys: (x.keys as Float32Array).slice(),
        values: (x.values as Float32Array).slice(),
      }));
      const lowBefore = low.layers.map((x) => ({
        cap: x.capacity,
        lengths: x.lengths.slice(),
        positions: x.positions.slice(),
        accumulated: x.accumulated.slice(),
        seen: x.seen.slice(),
      }));
      const start = seq.position;
      const result = await seq.step(ids, plan.prefill, { window: 2 });
      for (let l = 0; l < L; l++) {
        if (step === 0) {
          // the balancer: sqrt(max|k| / max|q|) from the first chunk (brute-force key maxima)
          const kmax = new Float32Array(K * d);
          const keys = result.newKeys[l] as Float32Array;
          for (let h = 0; h < K; h++) {
            for (let s = 0; s < chunk; s++) {
              for (let i = 0; i < d; i++) {
                kmax[h * d + i] = Math.max(kmax[h * d + i], Math.abs(keys[(h * chunk + s) * d + i]));
              }
            }
          }
          assert.deepEqual(low.layers[l].balance, balanceFactors(result.queryAbsMax![l], kmax));
        }
        const all = result.stats.all![l];
        const lowAll = result.lowStats!.all![l];
        const b = before[l];
        const S = chunk;
        const T = all.length / K; // cap + S
        for (let h = 0; h < K; h++) {
          const bh = low.layers[l].balance.subarray(h * d, (h + 1) * d);
          const high = new Set(seq.retained(l, h));
          const cands: Cand[] = [];
          // low entries, their mass grown by the low tier's own statistic
          const lb = lowBefore[l];
          for (let i = 0; i < lb.lengths[h]; i++) {
            const pos = lb.positions[h * lb.cap + i];
            if (high.has(pos)) {
              // promoted: the high tier holds what the graph attended to, the dequantized key times b
              const rows = expectRows.get(`${l}/${h}/${pos}`)!;
              const x = seq.store.layers[l];
              const slot = h * x.capacity + Array.from(seq.retained(l, h)).indexOf(pos);
              const key = (x.keys as Float32Array).subarray(slot * d, (slot + 1) * d);
              assert.deepEqual(key, rows.key.map((v, i) => Math.fround(v * bh[i])));
              assert.deepEqual((x.values as Float32Array).subarray(slot * d, (slot + 1) * d), rows.value);
              // its mass and queries seen come along, this run's counted
              assert.equal(x.seen[slot], lb.seen[h * lb.cap + i] + chunk);
              assert.equal(x.accumulated[slot], Math.fround(lb.accumulated[h * lb.cap + i] + lowAll[h * lb.cap + i]));
              promoted++;
              continue;
            }
            cands.push({
              pos,
              mass: Math.fround(lb.accumulated[h * lb.cap + i] + lowAll[h * lb.cap + i]),
              key: new Float32Array(0),
              value: new Float32Array(0),
            });
          }
          // what the high tier held and the chunk's new entries, unless still held
          for (let i = 0; i < b.lengths[h] + S; i++) {
            const old = i < b.lengths[h];
            const pos = old ? b.positions[h * b.cap + i] : start + i - b.lengths[h];
            if (high.has(pos)) continue;
            const row = old ? h * b.cap + i : h * S + i - b.lengths[h];
            const keys = old ? b.keys : result.newKeys[l] as Float32Array;
            const values = old ? b.values : result.newValues[l] as Float32Array;
            const mass = old
              ? Math.fround(b.accumulated[h * b.cap + i] + all[h * T + i])
              : all[h * T + (T - S) + i - b.lengths[h]];
            const key = keys.slice(row * d, (row + 1) * d);
            const value = values.slice(row * d, (row + 1) * d);
            cands.push({ pos, mass, key, value });
            expectRows.set(`${l}/${h}/${pos}`, {
              key: dequantizeRows(quantizeRows(balanceKeys(key, 1, bh), 1, d, spec)),
              value: dequantizeRows(quantizeRows(value, 1, d, spec)),
            });
            demoted++;
          }
          // the one selection saw the low entries too: H2O's score (mass / queries seen) of every kept entry it
          // did not protect (the head's first slot, the chunk's last 2) is at least that of every entry left out
          const hx = seq.store.layers[l];
          const lx = low.layers[l];
          const score = (acc: number, seen: number) => (seen > 0 ? acc / seen : 0);
          const sink = b.lengths[h] > 0 ? b.positions[h * b.cap] : start;
          let minKept = Infinity;
          for (let j = 0; j < hx.lengths[h]; j++) {
            const at = h * hx.capacity + j;
            if (hx.positions[at] === sink || hx.positions[at] >= start + chunk - 2) continue;
            minKept = Math.min(minKept, score(hx.accumulated[at], hx.seen[at]));
          }
          for (let j = 0; j < lx.lengths[h]; j++) {
            const at = h * lx.capacity + j;
            assert.ok(score(lx.accumulated[at], lx.seen[at]) <= minKept * (1 + 1e-6), `low entry outscores a kept one`);
          }
          const want = cands.sort((x, y) => y.mass - x.mass || y.pos - x.pos).slice(0, lowBudget)
            .sort((x, y) => x.pos - y.pos);
          const got = low.layers[l];
          assert.equal(got.lengths[h], want.length, `step ${step} layer ${l} head ${h}`);
          const keys = dequantizeRows(got.keys);
          const values = dequantizeRows(got.values);
          want.forEach((e, j) => {
            const slot = h * got.capacity + j;
            assert.equal(got.positions[slot], e.pos, `step ${step} layer ${l} head ${h} slot ${j}`);
            assert.ok(!high.has(e.pos), `position ${e.pos} in both tiers`);
            assert.ok(Math.abs(got.accumulated[slot] - e.mass) <= 1e-6 * (1 + e.mass));
            const rows = expectRows.get(`${l}/${h}/${e.pos}`)!;
            assert.deepEqual(keys.subarray(slot * d, (slot + 1) * d), rows.key);
            assert.deepEqual(values.subarray(slot * d, (slot + 1) * d), rows.value);
          });
        }
      }
    }
    assert.ok(demoted > L * K * lowBudget, `only ${demoted} demotions: the low budget was never full`);
    assert.ok(promoted > 0, "no entry was promoted back");
    console.log(`${demoted} demotions, ${promoted} promotions`);
    // the forked sequence's low tier is its own
    const fork = seq.fork();
    fork.low!.layers[0].lengths[0] = 0;
    assert.ok(low.layers[0].lengths[0] > 0);
  } finally {
    await session.close();
  }
});

Deno.test("low tier estimate: predicted KV peak, after-read and end bytes equal the meter's, with and without a decode budget", async (t) => {
  const m = await loadModel(models.get("llama")!, { positions: "original", lowTier: "int2" });
  try {
    const ids = Array.from({ length: 333 }, (_, i) => (i * 11) % m.config.vocab);
    const prefix = [1, 2, 3], suffix = [4, 5, 6, 7, 8];
    for (const decodeBudget of [undefined, 75]) {
      for (const lowBudget of [undefined, 20]) {
        await t.step(`decode budget ${decodeBudget ?? "none"}, low budget ${lowBudget ?? "same bytes"}`, async () => {
          const chunk = 40, maxTokens = 40;
          const state = await read({ ids }, {
            model: m,
            policy: "h2o",
            budget: 70,
            chunk,
            prefix,
            question: suffix,
            decodeBudget,
            keepEvicted: "int2",
            lowBudget,
          });
          const low = state.run.lowTier!;
          assert.ok(state.sequence.low!.entries() > 0);
          const afterRead = state.meter.summary().kvBytes;
          for await (const _ of generate(state, { suffix, maxTokens, eos: [] })) { /* drain */ }
          const s = state.meter.summary();
          const p = predictKv({
            config: m.config,
            plan: state.run.plan,
            bytesPerElement: 4,
            prefixTokens: prefix.length,
            documentTokens: ids.length,
            chunk,
            suffixTokens: suffix.length,
            maxTokens,
            patchTokens: patchTokens(state.run, suffix.length, 0),
            low: { budget: low.budget, entryBytes: low.entryBytes, promote: true },
          });
          assert.deepEqual(
            [p.peakBytes, p.afterReadBytes, p.endBytes],
            [s.kvPeakBytes, afterRead, s.kvBytes],
            "predicted vs measured (peak, after read, end)",
          );
          // a budget in bytes: as many low entries as fit
          if (lowBudget === undefined) {
            const d = m.config.headDim;
            assert.equal(low.budget, Math.floor((70 * 2 * d * 4) / low.entryBytes));
          }
        });
      }
    }
  } finally {
    await m.session.close();
  }
});

Deno.test("low tier options: bad combinations are usage errors before any model work; sizes become entries", async () => {
  const c = (await openCheckpoint(models.get("llama")!)).config;
  const base = { policy: "snapkv", budget: 64, positions: "original" as const, kvDtype: "float16" as const };
  const usage = async (o: Record<string, unknown>, re: RegExp) => {
    const err = await resolveRun(c, { ...base, ...o }).catch((e) => e);
    assert.ok(err instanceof TomeError && err.kind === "usage" && re.test(err.message), String(err));
  };
  await usage({ keepEvicted: "int3" }, /int4 or int2/);
  await usage({ lowBudget: 10 }, /needs --keep-evicted/);
  await usage({ keepEvicted: "int4", merge: "d2o" }, /does not combine/);
  await usage({ keepEvicted: "int4", keyChannels: 0.5 }, /does not combine/);
  await usage({ keepEvicted: "int2", positions: "compact" }, /original positions/);
  await usage({ keepEvicted: "int4", lowBudget: "3 parsecs" }, /--low-budget "3 parsecs": unknown unit/);
  await usage({ keepEvicted: "int4", lowBudget: "1.5" }, /whole number of entries/);
  const run = await resolveRun(c, { ...base, keepEvicted: "int4", lowBudget: "1MiB" });
  const d = c.headDim;
  // d = 16 (one group of 16 at float16): 2·(8 + 2·2) = 24 bytes an entry
  assert.equal(run.lowTier!.entryBytes, 2 * (d / 2 + 2 * (d / run.lowTier!.spec.group) * 2));
  assert.equal(run.lowTier!.budget, Math.floor(2 ** 20 / (c.layers * c.kvHeads * run.lowTier!.entryBytes)));
  assert.equal((await resolveRun(c, { ...base, keepEvicted: "int2", lowBudget: "12" })).lowTier!.budget, 12);
  assert.equal((await resolveRun(c, { ...base, policy: "full", keepEvicted: "int2" })).lowTier, null);
});
