/**
 * KV bytes per tier (issue 16: "KV bytes are the currency"): after real reads
 * and answers on the tiny models, the meter's high and low bytes — at every
 * chunk and generated token, at the end, and at each tier's peak — equal
 * entries × entry bytes recomputed here from first principles: a high entry is
 * a key and a value of d elements at the cache dtype, a thin one's key only its
 * kept channels (ThinK), a low entry its K and V rows at 4 or 2 bits plus a
 * step and a min per group at the cache dtype's width (MiKV, arXiv
 * 2402.18096), and merge counts cost nothing. `predictKv` (`tome estimate`)
 * gives the same tiers exactly. A meter restored from a state written before
 * tiers reads as all high; the display shows the low tier only when there is
 * one; `--json`'s method object says what the run does.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { predictKv } from "../core/engine/estimate.ts";
import { KvStore } from "../core/engine/kv_store.ts";
import { LowStore } from "../core/engine/low_store.ts";
import { patchTokens, resolveRun, type RunOptions } from "../core/engine/resolve.ts";
import { Sequence } from "../core/engine/sequence.ts";
import { type ChunkEvent, Meter, type MeterEvent, type MeterSnapshot } from "../core/meter/meter.ts";
import { generate, type LoadedModel, loadModel, read } from "../core/mod.ts";
import type { KvDtype } from "../core/model/config.ts";
import { Display } from "../cli/display.ts";
import { lowTierView, methodJson } from "../cli/method.ts";
import { makeTinyModels } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-tiers-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const loaded = new Map<string, LoadedModel>();

/** The tiny llama, loaded once per (dtype, low tier). */
async function tiny(kvDtype: KvDtype, lowTier?: "int4" | "int2"): Promise<LoadedModel> {
  const key = `${kvDtype}/${lowTier ?? "none"}`;
  if (!loaded.has(key)) {
    loaded.set(
      key,
      // plain models carry ThinK's query factor, which thin keys need
      await loadModel(models.get("llama")!, {
        positions: "original",
        kvDtype,
        ...(lowTier ? { lowTier } : { queryEnergy: true }),
      }),
    );
  }
  return loaded.get(key)!;
}

/** Bytes of one cache element at `dtype`. */
const elementBytes = (dtype: KvDtype) => (dtype === "float32" ? 4 : 2);

/**
 * Bytes of one low-tier entry restated from the quantization spec: the key row and the value row, each d values at
 * `bits` bits, plus a step and a min per group of 32 channels (one group of d when 32 does not divide d), the steps
 * and mins at the cache dtype's width.
 */
function lowEntryOracle(tier: "int4" | "int2", d: number, dtype: KvDtype): number {
  const bits = tier === "int4" ? 4 : 2;
  const groups = d % 32 === 0 ? d / 32 : 1;
  return 2 * ((d * bits) / 8 + 2 * groups * elementBytes(dtype));
}

interface Tiers {
  high: number;
  low: number;
}

/**
 * The tiers' bytes a sequence holds, from its entry counts alone: a high entry 2d elements, a thin one k + d, a low
 * one {@link lowEntryOracle}.
 */
function tiersOf(seq: Sequence, d: number, dtype: KvDtype, tier?: "int4" | "int2"): Tiers {
  const e = elementBytes(dtype);
  let high = 0, low = 0;
  for (const layer of seq.store.layers) {
    layer.lengths.forEach((n, h) => {
      const thin = layer.thinKeys?.count[h] ?? 0;
      const k = layer.thinKeys?.k ?? d;
      high += (thin * (k + d) + (n - thin) * 2 * d) * e;
    });
  }
  for (const layer of seq.low?.layers ?? []) for (const n of layer.lengths) low += n * lowEntryOracle(tier!, d, dtype);
  return { high, low };
}

interface Case {
  name: string;
  dtype: KvDtype;
  options: RunOptions;
  chunk: number;
  /** The question patch rides along each chunk. */
  question?: number[];
  /** Tokens after the document (default: five). */
  suffix?: number[];
  maxTokens: number;
}

const SUFFIX = [4, 5, 6, 7, 8];
const ids = Array.from({ length: 300 }, (_, i) => (i * 13 + 5) % 300);

const CASES: Case[] = [
  {
    name: "int4 low tier (same-bytes budget, never full: it grows to the last chunk), h2o",
    dtype: "float32",
    options: { policy: "h2o", budget: 64, keepEvicted: "int4" },
    chunk: 32,
    maxTokens: 10,
  },
  {
    name: "int2 low tier of 15, snapkv with the question patch, decode budget 42",
    dtype: "float16",
    options: { policy: "snapkv", budget: 40, keepEvicted: "int2", lowBudget: 15, decodeBudget: 42 },
    chunk: 48,
    question: SUFFIX,
    maxTokens: 40,
  },
  {
    name: "thin keys 0.5, snapkv, decode budget 60",
    dtype: "float16",
    options: { policy: "snapkv", budget: 40, keyChannels: 0.5, decodeBudget: 60 },
    chunk: 32,
    maxTokens: 30,
  },
  {
    name: "thin keys 0.5, chunks of 8, a 20-token suffix over decode budget 50 (the high peak right after the suffix)",
    dtype: "float32",
    options: { policy: "snapkv", budget: 40, keyChannels: 0.5, decodeBudget: 50 },
    chunk: 8,
    suffix: Array.from({ length: 20 }, (_, i) => 10 + i),
    maxTokens: 12,
  },
  {
    name: "d2o merge (counts free), snapkv",
    dtype: "float32",
    options: { policy: "snapkv", budget: 40, merge: "d2o" },
    chunk: 32,
    maxTokens: 6,
  },
  { name: "drop only, snapkv", dtype: "float16", options: { policy: "snapkv", budget: 40 }, chunk: 64, maxTokens: 6 },
];

Deno.test("per-tier KV bytes: the meter equals entries × entry bytes at every event, at the end and at each peak; predictKv equals the meter", async (t) => {
  for (const c of CASES) {
    await t.step(c.name, async () => {
      const model = await tiny(c.dtype, c.options.keepEvicted);
      const config = model.config;
      const { layers: L, kvHeads: K, headDim: d } = config;
      const run = await resolveRun(config, { ...c.options, chunk: c.chunk, positions: "original", kvDtype: c.dtype });
      const tier = c.options.keepEvicted;
      const suffix = c.suffix ?? SUFFIX;
      // the oracle's token bytes: a whole entry of every layer and KV head
      const tokenBytes = L * K * 2 * d * elementBytes(c.dtype);
      const seen: { e: MeterEvent; now: Tiers }[] = [];
      let seq: Sequence | null = null;
      const meter = new Meter(run.tokenBytes, (e) => seen.push({ e, now: tiersOf(seq!, d, c.dtype, tier) }));
      seq = new Sequence(
        model.session,
        new KvStore(config, run.kvDtype, run.keyChannels ?? undefined),
        meter,
        run.lowTier ? new LowStore(config, run.lowTier.spec, () => run.lowTier!.budget) : undefined,
      );
      const state = await read({ ids }, { model, run, from: seq, question: c.question });
      const afterRead = tiersOf(seq, d, c.dtype, tier);
      const read0 = meter.summary();
      const chunks = seen.length;
      for await (const _ of generate(state, { suffix, maxTokens: c.maxTokens, eos: [] })) { /* drain */ }
      const end = tiersOf(seq, d, c.dtype, tier);
      const s = meter.summary();

      // every event carries the tiers the sequence held when it was sent
      for (const { e, now } of seen) assert.deepEqual({ high: e.kvHighBytes, low: e.kvLowBytes }, now, e.type);
      assert.equal(seen.filter((x) => x.e.type === "token").length, c.maxTokens - 1);
      // the peaks: a chunk of c tokens (and the patch) is held whole, in the high tier, over what was held before
      const patch = run.questionPatch && c.question ? c.question.length : 0;
      let highPeak = 0, lowPeak = 0, prevHigh = 0;
      seen.forEach(({ now }, i) => {
        if (i < chunks) {
          const n = Math.min(c.chunk, ids.length - i * c.chunk);
          highPeak = Math.max(highPeak, prevHigh + (n + patch) * tokenBytes);
        }
        highPeak = Math.max(highPeak, now.high);
        lowPeak = Math.max(lowPeak, now.low);
        prevHigh = now.high;
        if (i === chunks - 1) {
          // the read's own figures, before the answer
          assert.deepEqual(now, afterRead);
          assert.deepEqual(
            [read0.kvHighBytes, read0.kvLowBytes, read0.kvHighPeakBytes, read0.kvLowPeakBytes],
            [afterRead.high, afterRead.low, highPeak, lowPeak],
            "after the read",
          );
          // the suffix is appended whole (no event of its own)
          highPeak = Math.max(highPeak, afterRead.high + suffix.length * tokenBytes);
        }
      });
      assert.deepEqual(
        { high: s.kvHighBytes, low: s.kvLowBytes, highPeak: s.kvHighPeakBytes, lowPeak: s.kvLowPeakBytes },
        { high: end.high, low: end.low, highPeak, lowPeak },
      );
      assert.equal(s.kvBytes, end.high + end.low);
      assert.ok(s.kvPeakBytes <= highPeak + lowPeak && s.kvPeakBytes >= Math.max(highPeak, lowPeak));
      if (tier) {
        assert.ok(lowPeak > 0 && end.low > 0, "the low tier held entries");
        assert.ok(afterRead.low <= L * K * run.lowTier!.budget * lowEntryOracle(tier, d, c.dtype));
      } else assert.equal(lowPeak, 0);
      if (c.options.keyChannels) {
        const thin = seq.store.layers.reduce((a, x) => a + x.thinKeys!.count.reduce((p, q) => p + q, 0), 0);
        assert.ok(thin > 0, "some keys are thin");
        assert.equal(seq.store.layers[0].thinKeys!.k, Math.ceil(0.5 * d));
        assert.ok(end.high < seq.store.entries() * 2 * d * elementBytes(c.dtype), "thin keys hold fewer bytes");
      }

      // tome estimate's prediction, per tier
      const p = predictKv({
        config,
        plan: run.plan,
        bytesPerElement: elementBytes(c.dtype),
        prefixTokens: 0,
        documentTokens: ids.length,
        chunk: c.chunk,
        patchTokens: patchTokens(run, c.question?.length ?? 0, 0),
        suffixTokens: suffix.length,
        maxTokens: c.maxTokens,
        ...(run.lowTier
          ? { low: { budget: run.lowTier.budget, entryBytes: run.lowTier.entryBytes, promote: true } }
          : {}),
      });
      assert.deepEqual(
        { high: p.high, low: p.low, peak: p.peakBytes },
        {
          high: { peakBytes: highPeak, afterReadBytes: afterRead.high, endBytes: end.high },
          low: { peakBytes: lowPeak, afterReadBytes: afterRead.low, endBytes: end.low },
          peak: s.kvPeakBytes,
        },
        "predicted vs measured per tier",
      );
    });
  }
  for (const m of loaded.values()) await m.session.close();
  loaded.clear();
});

Deno.test("a meter restored from a state written before tiers reads as all high; tiers survive a snapshot and a fork", () => {
  const old: MeterSnapshot = {
    tokens: 100,
    docTokens: 100,
    generated: 0,
    promptTokens: 100,
    framing: 0,
    resident: 3000,
    peakEntries: 60,
    kvPeak: 7680,
    kvNow: 5120,
    kept: 40,
    chunks: 4,
    prefillSeconds: 1,
  };
  const s = Meter.restore(128, old).summary();
  assert.deepEqual(
    [s.kvHighBytes, s.kvLowBytes, s.kvHighPeakBytes, s.kvLowPeakBytes],
    [old.kvNow, 0, old.kvPeak, 0],
  );
  // a meter with a low tier: 1000 high + 300 low bytes held, then a token
  const m = new Meter(100);
  m.chunk({
    tokens: 10,
    runTokens: 12,
    before: 0,
    after: 8,
    kvBytesBefore: 0,
    kvBytesAfter: 1300,
    lowBytesBefore: 0,
    lowBytesAfter: 300,
    bytes: 0,
    totalBytes: null,
    tokenized: 10,
  });
  m.token(9, 1450, false, 1400, 350);
  const want = { kvHighBytes: 1100, kvLowBytes: 350, kvHighPeakBytes: 1200, kvLowPeakBytes: 350 };
  const pick = (x: typeof want) => ({
    kvHighBytes: x.kvHighBytes,
    kvLowBytes: x.kvLowBytes,
    kvHighPeakBytes: x.kvHighPeakBytes,
    kvLowPeakBytes: x.kvLowPeakBytes,
  });
  assert.deepEqual(pick(m.summary()), want);
  assert.deepEqual(pick(Meter.restore(100, m.snapshot()).summary()), want);
  assert.deepEqual(pick(m.fork().summary()), want);
});

/** A chunk event with tiers. */
function chunkEvent(high: number, low: number): ChunkEvent {
  return {
    type: "chunk",
    chunk: 3,
    tokens: 1536,
    bytes: 6000,
    totalBytes: null,
    fraction: null,
    kept: 64,
    evicted: 1472,
    kvBytes: high + low,
    kvPeakBytes: high + low + 4096,
    kvHighBytes: high,
    kvLowBytes: low,
    kvHighPeakBytes: high + 4096,
    kvLowPeakBytes: low,
    footprint: 0.1,
    footprintBytes: 0.1,
    peakFraction: 0.05,
    rssBytes: 1 << 20,
    rssPeakBytes: 1 << 21,
    tokensPerSecond: 100,
    etaSeconds: null,
    seconds: 15,
  };
}

Deno.test("the display shows the low tier's bytes beside the high tier's when there is one, nothing extra when not", async () => {
  const config = (await tiny("float16")).config;
  const { layers: L, kvHeads: K } = config;
  const withLow = await resolveRun(config, { budget: 64, keepEvicted: "int4", positions: "original" });
  const plain = await resolveRun(config, { budget: 64, positions: "original" });
  const out: string[] = [];
  const show = (run: typeof plain) =>
    new Display("plain", {
      budget: run.budget,
      tokenBytes: run.tokenBytes,
      totalBytes: null,
      lowTier: lowTierView(run, config),
    }, (s) => out.push(s));
  const low = show(withLow), none = show(plain);
  const e = chunkEvent(40 * 1024, 24 * 1024);
  const budgetBytes = 64 * plain.tokenBytes + withLow.lowTier!.budget * L * K * withLow.lowTier!.entryBytes;
  assert.equal(withLow.lowTier!.entryBytes, lowEntryOracle("int4", config.headDim, "float16"));
  const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
  assert.equal(
    low.lines(e)[1].split(" · ")[0],
    `KV 64.0 KiB (high 40.0 KiB + int4 24.0 KiB, peak 68.0 KiB) of ${kib(budgetBytes)} budget`,
  );
  assert.equal(
    none.lines(chunkEvent(64 * 1024, 0))[1].split(" · ")[0],
    `KV 64.0 KiB (peak 68.0 KiB) of ${kib(64 * plain.tokenBytes)} budget`,
  );
  const summary = { ...(await tinySummary()), kvHighBytes: 2048, kvLowBytes: 1024, kvHighPeakBytes: 3072 };
  low.report({ ...summary, kvLowPeakBytes: 1536 });
  const lowReport = out.pop()!;
  assert.match(lowReport, /^tome: {3}high\s+2\.0 KiB\s+peak 3\.0 KiB$/m);
  assert.match(lowReport, /^tome: {3}int4\s+1\.0 KiB\s+peak 1\.5 KiB$/m);
  none.report({ ...summary, kvLowBytes: 0, kvLowPeakBytes: 0 });
  const plainReport = out.pop()!;
  assert.doesNotMatch(plainReport, /high|int4/);
  assert.equal(plainReport.split("\n").length, lowReport.split("\n").length - 2);
  for (const m of loaded.values()) await m.session.close();
  loaded.clear();
});

/** A summary of a short real read (its figures other than the tiers are what the report rows print). */
async function tinySummary() {
  const model = await tiny("float16");
  const state = await read({ ids: ids.slice(0, 100) }, { model, budget: 64, chunk: 32 });
  return state.meter.summary();
}

Deno.test("--json's method object says what the run does: policy, merge, thin keys, low tier", async () => {
  const config = (await tiny("float32")).config;
  const d = config.headDim;
  const method = async (o: RunOptions) =>
    methodJson(await resolveRun(config, { positions: "original", kvDtype: "float16", budget: 64, ...o }), d);
  assert.deepEqual(await method({ policy: "snapkv" }), {
    policy: "snapkv",
    merge: null,
    key_channels: null,
    low_tier: null,
  });
  assert.deepEqual((await method({ policy: "h2o", merge: "d2o" })).merge, "d2o");
  assert.deepEqual((await method({ policy: "ems" })).merge, "ems");
  assert.deepEqual((await method({ policy: "ems", merge: "drop" })).merge, "drop");
  assert.deepEqual((await method({ keyChannels: 0.6 })).key_channels, {
    channels: Math.ceil(0.6 * d),
    head_dim: d,
    window: 32,
  });
  assert.equal((await method({ keyChannels: 1 })).key_channels, null);
  const entry = lowEntryOracle("int2", d, "float16");
  assert.deepEqual((await method({ keepEvicted: "int2" })).low_tier, {
    tier: "int2",
    group: d % 32 === 0 ? 32 : d,
    params: "f16",
    // the same bytes as the high tier: 64 entries of 2d f16 values
    budget: Math.floor((64 * 2 * d * 2) / entry),
    entry_bytes: entry,
  });
  assert.equal((await method({ keepEvicted: "int4", lowBudget: 7 })).low_tier!.budget, 7);
  for (const m of loaded.values()) await m.session.close();
  loaded.clear();
});
