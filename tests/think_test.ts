/**
 * Thin keys (ThinK, arXiv 2407.21018) against restatements written here: a
 * mirror of every head's entries (full keys from the graph's output, the
 * channel choice by brute force, thin = all but the newest window) predicts
 * the store's expanded keys, values and bytes after every step; the reference
 * forward over the mirror's keys predicts the graph's logits over the store;
 * attention over the kept channels computed directly equals attention over the
 * expanded keys; `predictKv` equals the meter; `--key-channels 1` is the
 * ordinary run.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { predictKv } from "../core/engine/estimate.ts";
import { KvStore } from "../core/engine/kv_store.ts";
import { planBudgets } from "../core/engine/plan.ts";
import { patchTokens, resolveRun } from "../core/engine/resolve.ts";
import { Sequence } from "../core/engine/sequence.ts";
import type { KeyChannels } from "../core/engine/thin_keys.ts";
import { TomeError } from "../core/errors.ts";
import { Meter } from "../core/meter/meter.ts";
import { generate, type LoadedModel, loadModel, read } from "../core/mod.ts";
import { kvBytesPerToken, type KvDtype } from "../core/model/config.ts";
import { forward, loadWeights, type Past } from "../core/model/reference.ts";
import type { KvArray } from "../core/model/session.ts";
import { makePolicy } from "../core/policies/mod.ts";
import { keyChannelsFlag } from "../cli/options.ts";
import { fromF16Bits } from "../kernels/fp16.ts";
import { rng, tome } from "./helpers.ts";
import { makeTinyModels, maxAbsDiff } from "./model_fixtures.ts";
import { predictRead } from "./engine_oracle.ts";

const root = await Deno.makeTempDir({ prefix: "tome-think-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const loaded = new Map<string, LoadedModel>();
async function tiny(kvDtype: KvDtype): Promise<LoadedModel> {
  if (!loaded.has(kvDtype)) {
    loaded.set(kvDtype, await loadModel(models.get("llama")!, { positions: "original", kvDtype, queryEnergy: true }));
  }
  return loaded.get(kvDtype)!;
}

/** One entry as the mirror holds it: its full key row as the graph returned it, its value row, and whether it is thin. */
interface Entry {
  pos: number;
  key: number[];
  value: number[];
  thin: boolean;
}

/**
 * Brute force: channel i scores Σ q_i² · Σ_t k[t, i]² (the square of ThinK's ‖Q_win[:, i]·K[:, i]ᵀ‖, with Σ q_i² the
 * graph's query energy of the head, `query` [d]: think_query_test.ts checks it against the reference forward) over
 * the candidates; the k best, ties to the lower index, ascending.
 */
function bruteChannels(keys: number[][], query: ArrayLike<number>, d: number, k: number, f16: boolean): number[] {
  const score = Array.from({ length: d }, (_, i) =>
    query[i] * keys.reduce((s, row) => {
      const x = f16 ? fromF16Bits(row[i]) : row[i];
      return s + x * x;
    }, 0));
  const order = [...score.keys()].sort((a, b) => (score[b] !== score[a] ? score[b] - score[a] : a - b));
  return order.slice(0, k).sort((a, b) => a - b);
}

/** The mirror's expected key row as the graph gets it: thin rows keep only `channels`, 0 elsewhere. */
function expectedRow(e: Entry, channels: number[] | null): number[] {
  return e.thin ? e.key.map((x, i) => (channels!.includes(i) ? x : 0)) : e.key;
}

const rowsOf = (a: KvArray, at: number, n: number, d: number) =>
  Array.from({ length: n }, (_, r) => Array.from(a.subarray((at + r) * d, (at + r + 1) * d)));

/**
 * Steps a Sequence over random chunks with `policy` and thin keys, keeping
 * the mirror; after every step (and after appends) the store's expanded keys,
 * values and bytes equal the mirror's. Returns the sequence and the mirror.
 */
async function run(
  policyName: string,
  kvDtype: KvDtype,
  o = { budget: 16, chunk: 8, chunks: 6, window: 10, k: 6, patch: [] as number[] },
) {
  const model = await tiny(kvDtype);
  const { config } = model;
  const { layers: L, kvHeads: K, headDim: d } = config;
  const f16 = kvDtype === "float16";
  const kc: KeyChannels = { channels: o.k, window: o.window };
  const policy = await makePolicy(policyName, config);
  // knorm's own protection (its last 64) would keep everything here: only the whole window is protected
  const recent = policyName === "knorm" ? 0 : undefined;
  const plan = planBudgets(policy, config, { budget: o.budget, keyChannels: kc, recent });
  const seq = new Sequence(model.session, new KvStore(config, kvDtype, kc), new Meter(kvBytesPerToken(config, 4)));
  const mirror: Entry[][][] = Array.from({ length: L }, () => Array.from({ length: K }, () => []));
  const channels: (number[][] | null)[] = new Array(L).fill(null);
  const r = rng(5);

  const check = (what: string) => {
    const past = seq.store.past();
    let elements = 0;
    for (let l = 0; l < L; l++) {
      const layer = seq.store.layers[l];
      for (let h = 0; h < K; h++) {
        const es = mirror[l][h];
        assert.deepEqual([...seq.retained(l, h)], es.map((e) => e.pos), `${what}: layer ${l} head ${h} positions`);
        const got = rowsOf(past.keys[l], h * layer.capacity, es.length, d);
        const want = es.map((e) => expectedRow(e, channels[l]?.[h] ?? null));
        assert.deepEqual(got, want, `${what}: layer ${l} head ${h} keys`);
        assert.deepEqual(rowsOf(layer.values, h * layer.capacity, es.length, d), es.map((e) => e.value));
        for (const e of es) elements += (e.thin ? o.k : d) + d;
      }
    }
    assert.equal(seq.store.bytes(), elements * (f16 ? 2 : 4), `${what}: bytes`);
  };

  for (let step = 0; step < o.chunks; step++) {
    const ids = Array.from({ length: o.chunk }, () => 4 + Math.floor(r() * 300));
    const start = seq.position;
    const result = await seq.step(ids, plan.prefill, { window: o.window, patch: o.patch });
    const S = o.chunk + o.patch.length;
    // with a patch (the observation window, not kept) nothing stays whole
    const whole = o.patch.length > 0 ? 0 : o.window;
    for (let l = 0; l < L; l++) {
      const candidates = mirror[l].map((es, h) => [
        ...es,
        ...rowsOf(result.newKeys[l], h * S, o.chunk, d).map((key, j) => ({
          pos: start + j,
          key,
          value: rowsOf(result.newValues[l], h * S + j, 1, d)[0],
          thin: false,
        })),
      ]);
      const kept = candidates.map((cs, h) => {
        const keep = new Set(seq.retained(l, h));
        if (policyName === "knorm" && cs.length > o.budget) {
          // restated: the window, then the lowest ‖k‖ of the rest over the keys as the graph sees them (thin: kept channels)
          const norm = (e: Entry) =>
            Math.hypot(...expectedRow(e, channels[l]?.[h] ?? null).map((x) => (f16 ? fromF16Bits(x) : x)));
          const rest = cs.slice(0, cs.length - whole).map((e) => [norm(e), e.pos]).sort((a, b) => a[0] - b[0]);
          const want = [
            ...rest.slice(0, o.budget - whole).map((x) => x[1]),
            ...cs.slice(cs.length - whole).map((e) => e.pos),
          ];
          assert.deepEqual([...keep].sort((a, b) => a - b), want.sort((a, b) => a - b), `knorm selection, layer ${l}`);
        }
        return cs.filter((e) => keep.has(e.pos));
      });
      // thin: all but the newest window; a thin entry stays thin
      const next = kept.map((es) => es.map((e, i) => ({ ...e, thin: e.thin || i < es.length - whole })));
      if (!channels[l] && next.some((es) => es.some((e) => e.thin))) {
        const q = result.queryEnergy![l];
        channels[l] = candidates.map((cs, h) =>
          bruteChannels(cs.map((e) => e.key), q.subarray(h * d, (h + 1) * d), d, o.k, f16)
        );
      }
      mirror[l] = next;
    }
    check(`${policyName} step ${step}`);
  }
  // appended entries (the suffix, generated tokens) stay whole
  const extra = [5, 6, 7];
  const start = seq.position;
  const result = await seq.append(extra);
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < K; h++) {
      for (let j = 0; j < extra.length; j++) {
        mirror[l][h].push({
          pos: start + j,
          key: rowsOf(result.newKeys[l], h * extra.length + j, 1, d)[0],
          value: rowsOf(result.newValues[l], h * extra.length + j, 1, d)[0],
          thin: false,
        });
      }
    }
  }
  check(`${policyName} append`);
  return { model, seq, mirror, channels };
}

Deno.test("thin keys: the store equals a mirror of every head (channels by brute force, all but the window thin)", async (t) => {
  for (const policy of ["snapkv", "h2o", "tova", "knorm", "full"]) {
    await t.step(`${policy}, f32`, async () => {
      await run(policy, "float32");
    });
  }
  await t.step("snapkv, f16", async () => {
    await run("snapkv", "float16");
  });
  for (const policy of ["snapkv", "knorm"]) {
    await t.step(`${policy} with a question patch: every kept entry thin`, async () => {
      await run(policy, "float32", { budget: 16, chunk: 8, chunks: 5, window: 10, k: 6, patch: [11, 12, 13] });
    });
  }
});

Deno.test("thin keys: the graph over the store equals the reference forward over the mirror's keys", async () => {
  const { model, seq, mirror, channels } = await run("snapkv", "float32");
  const { layers: L, kvHeads: K, headDim: d } = model.config;
  const P = Math.max(...mirror.flatMap((hs) => hs.map((es) => es.length)));
  const past: Past = {
    length: P,
    layers: mirror.map((hs, l) => {
      const keys = new Float32Array(K * P * d), values = new Float32Array(K * P * d);
      hs.forEach((es, h) =>
        es.forEach((e, i) => {
          keys.set(expectedRow(e, channels[l]![h]), (h * P + i) * d);
          values.set(e.value, (h * P + i) * d);
        })
      );
      return { keys, values };
    }),
    lengths: mirror.map((hs) => hs.map((es) => es.length)),
  };
  const w = await loadWeights(model.checkpoint);
  const want = forward(model.config, w, [9], [seq.position], past, "original").logits;
  const got = (await seq.append([9], { logits: true })).logits!;
  assert.ok(maxAbsDiff(got, want) < 1e-4, `logits differ by ${maxAbsDiff(got, want)}`);
  assert.equal(L, mirror.length);
});

Deno.test("thin keys: attention over the kept channels equals attention over the expanded keys", async () => {
  const { model, seq } = await run("snapkv", "float32");
  const { kvHeads: K, headDim: d } = model.config;
  const layer = seq.store.layers[0];
  const thin = layer.thinKeys!;
  const expanded = seq.store.past().keys[0];
  const r = rng(3);
  for (let h = 0; h < K; h++) {
    const n = layer.lengths[h], m = thin.count[h];
    assert.ok(m > 0 && m < n, "some entries thin, the window whole");
    const q = Array.from({ length: d }, () => r() * 2 - 1);
    const ch = Array.from(thin.channels!.subarray(h * thin.k, (h + 1) * thin.k));
    // directly: thin rows dot q over the kept channels only, full rows over all d
    const direct = Array.from(
      { length: n },
      (_, t) =>
        t < m
          ? ch.reduce((s, c, j) => s + q[c] * thin.thin[(h * thin.capacity + t) * thin.k + j], 0)
          : q.reduce((s, x, i) => s + x * thin.full[(h * thin.fullCap + t - m) * d + i], 0),
    );
    const viaExpanded = Array.from(
      { length: n },
      (_, t) => q.reduce((s, x, i) => s + x * expanded[(h * layer.capacity + t) * d + i], 0),
    );
    const softmax = (s: number[]) => {
      const mx = Math.max(...s), e = s.map((x) => Math.exp((x - mx) / Math.sqrt(d))), z = e.reduce((a, b) => a + b);
      return e.map((x) => x / z);
    };
    const out = (p: number[]) =>
      Array.from(
        { length: d },
        (_, i) => p.reduce((s, pt, t) => s + pt * layer.values[(h * layer.capacity + t) * d + i], 0),
      );
    assert.ok(maxAbsDiff(out(softmax(direct)), out(softmax(viaExpanded))) < 1e-6);
    // the thin rows really are k wide: the store holds no pruned channel
    assert.equal(thin.thin.length, K * thin.capacity * thin.k);
  }
});

Deno.test("thin keys: tome estimate's replay equals the meter", async (t) => {
  const m = await tiny("float32");
  const ids = Array.from({ length: 333 }, (_, i) => (i * 11) % m.config.vocab);
  const prefix = [1, 2, 3], suffix = [4, 5, 6, 7];
  for (const name of ["snapkv", "h2o", "tova", "streaming", "full", "knorm"]) {
    // 75: the window refills one generated token at a time after a read with a patch (nothing whole)
    for (const decodeBudget of [undefined, 75, 150]) {
      await t.step(`${name}, decode budget ${decodeBudget ?? "none"}`, async () => {
        const chunk = 40, maxTokens = decodeBudget === 75 ? 12 : 120;
        const state = await read({ ids }, {
          model: m,
          policy: name,
          budget: 70,
          chunk,
          prefix,
          question: suffix,
          decodeBudget,
          keyChannels: 0.6,
        });
        assert.ok(state.run.keyChannels);
        const afterRead = state.meter.summary().kvBytes;
        for await (const _ of generate(state, { suffix, maxTokens, eos: [] })) { /* drain */ }
        const s = state.meter.summary();
        const p = predictRead(m, state, {
          prefixTokens: prefix.length,
          documentTokens: ids.length,
          chunk,
          suffixTokens: suffix.length,
          maxTokens,
        });
        assert.deepEqual(
          [p.peakBytes, p.afterReadBytes, p.endBytes],
          [s.kvPeakBytes, afterRead, s.kvBytes],
          "predicted vs measured (peak, after read, end)",
        );
        const whole = predictKv({
          config: m.config,
          plan: (await resolveRun(m.config, { policy: name, budget: 70, decodeBudget, kvDtype: "float32" })).plan,
          bytesPerElement: 4,
          prefixTokens: prefix.length,
          documentTokens: ids.length,
          chunk,
          patchTokens: patchTokens(state.run, suffix.length, 0),
          suffixTokens: suffix.length,
          maxTokens,
        });
        assert.ok(p.afterReadBytes < whole.afterReadBytes, "thin keys hold fewer bytes");
      });
    }
  }
});

Deno.test("thin keys: --key-channels 1 is the ordinary run", async () => {
  const m = await tiny("float16");
  const ids = Array.from({ length: 200 }, (_, i) => (i * 7 + 3) % m.config.vocab);
  const once = async (keyChannels?: number) => {
    const state = await read({ ids }, { model: m, policy: "snapkv", budget: 48, chunk: 32, keyChannels });
    const logits: number[][] = [];
    let text = "";
    for await (
      const piece of generate(state, { suffix: [4, 5], maxTokens: 8, eos: [], onLogits: (l) => logits.push([...l]) })
    ) text += piece;
    return { text, logits, kv: state.meter.summary().kvPeakBytes, run: state.run.keyChannels };
  };
  const plain = await once(), one = await once(1), thin = await once(0.5);
  assert.deepEqual(one, plain);
  assert.equal(one.run, null);
  assert.ok(thin.kv < plain.kv, "0.5 holds fewer bytes");
  assert.notDeepEqual(thin.logits, plain.logits);
});

Deno.test("thin keys: bad fractions and --merge are usage errors", async () => {
  const m = await tiny("float32");
  for (const bad of [0, -0.5, 1.5, NaN]) {
    await assert.rejects(resolveRun(m.config, { keyChannels: bad }), TomeError);
    assert.throws(() => keyChannelsFlag(String(bad)), TomeError);
  }
  assert.throws(() => keyChannelsFlag("lots"), TomeError);
  await assert.rejects(resolveRun(m.config, { keyChannels: 0.5, merge: "d2o" }), /does not combine with merging/);
  const r = await resolveRun(m.config, { keyChannels: 0.6, window: 8 });
  assert.deepEqual(r.keyChannels, { channels: Math.ceil(0.6 * m.config.headDim), window: 8 });
  assert.ok(r.plan.prefill.protect(0, 1, false).recent >= 8, "the whole window is protected");
  assert.equal(r.plan.prefill.protect(0, 4, true).recent, 0, "with a patch nothing stays whole");
});

Deno.test("thin keys: the CLI takes --key-channels, refuses bad values, saves, and its JSON counts thin bytes", async () => {
  const doc = join(root, "doc.txt");
  await Deno.writeTextFile(doc, "the quick brown fox jumps over the lazy dog. ".repeat(40));
  const model = models.get("llama")!;
  const base = ["ask", "what", doc, "-m", model, "--budget", "40", "--max-tokens", "2", "--json", "--quiet"];
  const bad = await tome([...base, "--key-channels", "0"]);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^tome: --key-channels must be a fraction in \(0, 1\]/);
  // a reading with thin keys saves (tests/state_tiers_test.ts checks what it holds)
  const save = await tome([...base, "--key-channels", "0.5", "--save", join(root, "s.tome")]);
  assert.equal(save.code, 0, save.stderr);
  const [plain, thin] = await Promise.all([tome(base), tome([...base, "--key-channels", "0.5"])]);
  assert.equal(plain.code, 0, plain.stderr);
  assert.equal(thin.code, 0, thin.stderr);
  const kv = (r: { stdout: string }) => JSON.parse(r.stdout).summary?.kv_bytes ?? JSON.parse(r.stdout).kv_bytes;
  assert.ok(kv(thin) < kv(plain), `thin ${kv(thin)} < whole ${kv(plain)}`);
});

Deno.test("thin keys: the footprint in bytes-time restated from the chunk events; equal to the entry footprint without", async () => {
  const m = await tiny("float16");
  const tb = kvBytesPerToken(m.config, 2);
  const ids = Array.from({ length: 300 }, (_, i) => (i * 11 + 5) % m.config.vocab);
  const once = async (keyChannels?: number) => {
    const chunks: { tokens: number; kvBytes: number }[] = [];
    const state = await read({ ids }, {
      model: m,
      policy: "snapkv",
      budget: 48,
      chunk: 32,
      keyChannels,
      onEvent: (e) => e.type === "chunk" && chunks.push({ tokens: e.tokens, kvBytes: e.kvBytes }),
    });
    // the definition: every query of a chunk of c tokens sees the bytes held before it and the chunk's earlier tokens
    let resident = 0, held = 0, read_ = 0;
    for (const e of chunks) {
      const c = e.tokens - read_;
      resident += ((c * (c + 1)) / 2) * tb + c * held;
      held = e.kvBytes;
      read_ = e.tokens;
    }
    const n = read_;
    return { summary: state.meter.summary(), expected: resident / (tb * ((n * (n + 1)) / 2)) };
  };
  const thin = await once(0.5), plain = await once();
  assert.ok(
    Math.abs(thin.summary.footprintBytes - thin.expected) < 1e-12,
    `${thin.summary.footprintBytes} vs ${thin.expected}`,
  );
  assert.ok(thin.summary.footprintBytes < thin.summary.footprint, "thin keys cost fewer byte-steps than entry-steps");
  assert.ok(Math.abs(plain.summary.footprintBytes - plain.summary.footprint) < 1e-12);
  assert.ok(Math.abs(plain.summary.footprintBytes - plain.expected) < 1e-12);
});
