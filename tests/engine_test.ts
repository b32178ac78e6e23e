import assert from "node:assert/strict";
import { join } from "node:path";
import { parseBudget } from "../core/engine/budget.ts";
import { generate, type LoadedModel, loadModel, type MeterEvent, read } from "../core/mod.ts";
import { kvBytesPerToken } from "../core/model/config.ts";
import { appendEntries, forward, loadWeights, type Past, type Weights } from "../core/model/reference.ts";
import { TomeError } from "../core/errors.ts";
import { parseDuoMask } from "../core/policies/duo.ts";
import { KVZIP_PROMPT } from "../core/policies/kvzip.ts";
import { makeRetainingHeads } from "../core/model/make.ts";
import { readRetainingHeads } from "../core/model/onnx/retaining.ts";
import { mixedText } from "./fixture_text.ts";
import { rng } from "./helpers.ts";
import { oracleKept, predictRead } from "./engine_oracle.ts";
import { makeTinyModels, maxAbsDiff, TINY_MODELS } from "./model_fixtures.ts";
import type { PositionMode } from "../core/model/config.ts";

const root = await Deno.makeTempDir({ prefix: "tome-engine-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const loaded = new Map<string, LoadedModel>();
async function model(name: string, positions: "original" | "compact" = "original"): Promise<LoadedModel> {
  const key = `${name}/${positions}`;
  if (!loaded.has(key)) loaded.set(key, await loadModel(models.get(name)!, { positions }));
  return loaded.get(key)!;
}

/** Logits and K/V of the reference forward over the whole prompt at once, then one token at a time along `ids`. */
function referenceRun(m: LoadedModel, w: Weights, prompt: number[], ids: number[], mode: PositionMode) {
  const c = m.config;
  let out = forward(c, w, prompt, prompt.map((_, i) => i), undefined, mode);
  const promptKv = { keys: out.newKeys, values: out.newValues };
  let past: Past = {
    length: prompt.length,
    layers: out.newKeys.map((k, l) => ({ keys: k, values: out.newValues[l] })),
    positions: Array.from({ length: prompt.length }, (_, i) => i),
  };
  const logits = [out.logits.slice((prompt.length - 1) * c.vocab)];
  for (const id of ids.slice(0, -1)) {
    out = forward(c, w, [id], [past.length], past, mode);
    past = {
      length: past.length + 1,
      layers: past.layers.map((p, l) => ({
        keys: appendEntries(p.keys, past.length, out.newKeys[l], 1, c.kvHeads, c.headDim),
        values: appendEntries(p.values, past.length, out.newValues[l], 1, c.kvHeads, c.headDim),
      })),
      // compact: nothing is evicted, so every slot's position is its index
      positions: Array.from({ length: past.length + 1 }, (_, i) => i),
    };
    logits.push(out.logits.slice());
  }
  return { logits, promptKv };
}

/** Graph against reference tolerance at f32 (as in model_graph_test.ts). */
const TOL = 1e-4;

for (const { name } of TINY_MODELS) {
  Deno.test(`engine: chunked prefill + decode gives the logits of one unchunked pass, at every step (${name})`, async (t) => {
    const text = mixedText(21, 900);
    for (const positions of ["original", "compact"] as const) {
      const m = await model(name, positions);
      const w = await loadWeights(m.checkpoint);
      const doc = m.tokenizer.encode(text);
      const prefix = m.tokenizer.encode("Document:");
      const question = m.tokenizer.encode(" What is the pass code?");
      const read0 = [...prefix, ...doc];
      for (const [policy, chunk] of [["full", 37], ["snapkv", 64], ["h2o", 1000], ["streaming", 23]] as const) {
        await t.step(`${positions}, ${policy} (budget ≥ input), chunk ${chunk}`, async () => {
          const state = await read(text, { model: m, policy, budget: 4096, chunk, prefix, question });
          // the cache after reading holds every prompt token's K/V, across chunk boundaries
          const { store } = state.sequence;
          const K = m.config.kvHeads, d = m.config.headDim;
          const ids: number[] = [];
          const rows: Float32Array[] = [];
          const kvAfterRead = store.layers.map((layer) => ({
            keys: Float32Array.from(layer.keys as Float32Array),
            cap: layer.capacity,
            lengths: layer.lengths.slice(),
          }));
          for await (
            const _ of generate(state, {
              suffix: question,
              maxTokens: 12,
              eos: [],
              onToken: (id) => ids.push(id),
              onLogits: (row) => rows.push(row.slice()),
            })
          ) { /* drain */ }
          const ref = referenceRun(m, w, [...read0, ...question], ids, positions);
          for (let l = 0; l < m.config.layers; l++) {
            const got = kvAfterRead[l];
            for (let h = 0; h < K; h++) {
              assert.equal(got.lengths[h], read0.length, `layer ${l} head ${h}: entries after reading`);
              const mine = got.keys.subarray(h * got.cap * d, (h * got.cap + read0.length) * d);
              const total = read0.length + question.length;
              const theirs = ref.promptKv.keys[l].subarray(h * total * d, (h * total + read0.length) * d);
              const diff = maxAbsDiff(mine, theirs);
              assert.ok(diff < TOL, `layer ${l} head ${h}: keys differ by ${diff}`);
            }
          }
          assert.equal(rows.length, ids.length);
          for (let i = 0; i < rows.length; i++) {
            const diff = maxAbsDiff(rows[i], ref.logits[i]);
            assert.ok(diff < TOL, `decode step ${i}: logits differ by ${diff}`);
          }
        });
      }
    }
  });
}

const ORACLE_CASES: { policy: string; patch: boolean }[] = [
  { policy: "streaming", patch: false },
  { policy: "knorm", patch: false },
  { policy: "snapkv", patch: true },
  { policy: "snapkv", patch: false },
  { policy: "pyramidkv", patch: true },
  { policy: "pyramid:h2o", patch: true },
  { policy: "h2o", patch: true },
  { policy: "tova", patch: true },
  { policy: "corm", patch: false },
  { policy: "corm", patch: true },
  { policy: "duo", patch: false },
  { policy: "kvzip", patch: false },
];

// duo: layer 0 head 0 and layer 1 head 1 are retrieval heads at sparsity 0.5
const maskFile = join(root, "duo_mask.tsv");
await Deno.writeTextFile(maskFile, "# layers x kv heads\n0.91\t0.12\n0.05\t0.77\n");
const retrieval = [[true, false], [false, true]];

for (const name of ["llama", "qwen3"]) {
  Deno.test(`engine: every policy's selection equals brute force over the reference's attention (${name})`, async (t) => {
    const m = await model(name);
    const w = await loadWeights(m.checkpoint);
    const r = rng(17);
    const ids = Array.from({ length: 300 }, () => Math.floor(r() * m.config.vocab));
    const question = Array.from({ length: 9 }, () => Math.floor(r() * m.config.vocab));
    for (const cs of ORACLE_CASES) {
      await t.step(`${cs.policy}${cs.patch ? " + question patch" : ""}`, async () => {
        const opts = { policy: cs.policy, budget: 80, chunk: 48, question, patch: cs.patch, window: 16 };
        const state = await read({ ids }, {
          model: m,
          ...opts,
          questionPatch: cs.patch,
          policyOptions: { mask: maskFile },
        });
        const expected = oracleKept(m.config, w, ids, {
          ...opts,
          retrieval: cs.policy === "duo" ? retrieval : undefined,
          repeat: cs.policy === "kvzip" ? m.tokenizer.encode(KVZIP_PROMPT) : undefined,
        });
        for (let l = 0; l < m.config.layers; l++) {
          for (let h = 0; h < m.config.kvHeads; h++) {
            assert.deepEqual(Array.from(state.retained(l, h)), expected[l][h], `layer ${l} head ${h}`);
          }
        }
      });
    }
  });
}

Deno.test("meter: peak KV bytes = (budget + chunk) × bytes per token; footprint and peak fraction by their definitions", async () => {
  const m = await model("llama");
  const events: MeterEvent[] = [];
  const N = 700, B = 96, c = 64;
  const ids = Array.from({ length: N }, (_, i) => (i * 7) % m.config.vocab);
  const state = await read({ ids }, {
    model: m,
    policy: "streaming",
    budget: B,
    chunk: c,
    onEvent: (e) => events.push(e),
  });
  const perToken = kvBytesPerToken(m.config, 4);
  const s = state.meter.summary();
  assert.equal(s.kvPeakBytes, (B + c) * perToken);
  assert.equal(s.kvBytes, B * perToken);
  assert.equal(s.documentTokens, N);
  // footprint: Σ over chunks of c(c+1)/2 + c·P, over N(N+1)/2
  let resident = 0, P = 0, peak = 0;
  for (let t0 = 0; t0 < N; t0 += c) {
    const n = Math.min(c, N - t0);
    resident += (n * (n + 1)) / 2 + n * P;
    peak = Math.max(peak, P + n);
    P = Math.min(B, P + n);
  }
  assert.ok(Math.abs(s.footprint - resident / ((N * (N + 1)) / 2)) < 1e-12);
  assert.ok(Math.abs(s.peakFraction - peak / N) < 1e-12);
  const chunks = events.filter((e) => e.type === "chunk");
  assert.equal(chunks.length, Math.ceil(N / c));
  assert.equal(chunks.at(-1)!.type === "chunk" && chunks.at(-1)!.evicted, N - B);
});

Deno.test("engine: locret's selection (retaining heads in the graph) equals brute force", async () => {
  const m0 = await model("qwen2");
  const heads = join(root, "retaining.safetensors");
  await makeRetainingHeads(heads, m0.config, { hidden: 24, seed: 5 });
  const m = await loadModel(models.get("qwen2")!, { retainingHeads: heads });
  loaded.set("qwen2/locret", m);
  const w = await loadWeights(m.checkpoint);
  const r = rng(23);
  const ids = Array.from({ length: 260 }, () => Math.floor(r() * m.config.vocab));
  const opts = { policy: "locret", budget: 90, chunk: 40, question: [], patch: false, window: 16 };
  const state = await read({ ids }, { model: m, ...opts });
  const retaining = await readRetainingHeads(heads, m.config);
  const expected = oracleKept(m.config, w, ids, { ...opts, retaining });
  for (let l = 0; l < m.config.layers; l++) {
    for (let h = 0; h < m.config.kvHeads; h++) assert.deepEqual(Array.from(state.retained(l, h)), expected[l][h]);
  }
  await assert.rejects(
    read({ ids }, { model: m0, policy: "locret", budget: 90 }),
    /needs --retaining-heads FILE/,
  );
});

Deno.test("engine: decode-time eviction keeps the decode budget; a budget above the final length changes nothing", async () => {
  const m = await model("mistral");
  const ids = Array.from({ length: 200 }, (_, i) => (i * 13) % m.config.vocab);
  const suffix = [5, 6, 7];
  const run = async (decodeBudget?: number) => {
    const state = await read({ ids }, { model: m, policy: "streaming", budget: 64, chunk: 50, decodeBudget });
    const out: number[] = [];
    const gen = generate(state, { suffix, maxTokens: 30, eos: [], onToken: (id) => out.push(id) });
    for await (const _ of gen) { /* drain */ }
    return { state, out };
  };
  const plain = await run();
  const roomy = await run(64 + 3 + 30);
  assert.deepEqual(roomy.out, plain.out);
  const tight = await run(40);
  // StreamingLLM at every step: the 4 sinks and the most recent 36 positions (200 document + 3 suffix + 29 fed back)
  const last = 200 + 3 + 29;
  const expected = [0, 1, 2, 3, ...Array.from({ length: 36 }, (_, i) => last - 36 + i)];
  for (let l = 0; l < m.config.layers; l++) {
    for (let h = 0; h < m.config.kvHeads; h++) assert.deepEqual(Array.from(tight.state.retained(l, h)), expected);
  }
  assert.equal(tight.state.meter.summary().kvBytes, 40 * kvBytesPerToken(m.config, 4));
});

Deno.test("estimate: predicted KV peak, after-read and full-cache bytes equal the meter's, for every policy, with and without a decode budget, in both position modes", async (t) => {
  const prefix = [1, 2, 3], suffix = [4, 5, 6, 7, 8];
  const policies = [
    "full",
    "streaming",
    "knorm",
    "snapkv",
    "pyramidkv",
    "pyramid:h2o",
    "h2o",
    "tova",
    "corm",
    "duo",
    "kvzip",
  ];
  for (const positions of ["original", "compact"] as const) {
    const m = await model("llama", positions);
    const ids = Array.from({ length: 333 }, (_, i) => (i * 11) % m.config.vocab);
    for (const name of policies) {
      for (const decodeBudget of [undefined, 75]) {
        await t.step(`${positions}, ${name}, decode budget ${decodeBudget ?? "none"}`, async () => {
          const chunk = name === "duo" ? 64 : 40, maxTokens = 40;
          const patch = name !== "duo" && name !== "knorm";
          const state = await read({ ids }, {
            model: m,
            policy: name,
            policyOptions: { mask: maskFile },
            budget: 70,
            chunk,
            prefix,
            question: suffix,
            questionPatch: patch,
            decodeBudget,
          });
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
            [p.peakBytes, p.afterReadBytes, p.fullBytes],
            [s.kvPeakBytes, afterRead, s.fullKvBytes],
            "predicted vs measured (peak, after read, full)",
          );
        });
      }
    }
  }
});

Deno.test("duo masks: sparsity or threshold decides retrieval heads; malformed masks are usage errors", () => {
  const tsv = "0.9 0.1 0.5\n0.2 0.8 0.3\n";
  assert.deepEqual(parseDuoMask(tsv, 2, 3, { sparsity: 0.5 }).retrieval, [[true, false, true], [false, true, false]]);
  assert.deepEqual(parseDuoMask(tsv, 2, 3, { threshold: 0.6 }).retrieval, [[true, false, false], [false, true, false]]);
  assert.deepEqual(parseDuoMask(tsv, 2, 3, { sparsity: 0 }).retrieval.flat().every((x) => x), true);
  assert.throws(() => parseDuoMask(tsv, 3, 3, {}), /expected 3 rows of 3 numbers/);
  assert.throws(() => parseDuoMask("1 x\n", 1, 2, {}), TomeError);
});

Deno.test("budgets: entries or sizes; too small or malformed budgets are usage errors", async () => {
  const m = await model("llama");
  const perToken = kvBytesPerToken(m.config, 2);
  assert.equal(parseBudget("4096", m.config, 2), 4096);
  assert.equal(parseBudget("1MiB", m.config, 2), Math.floor(2 ** 20 / perToken));
  assert.equal(parseBudget("0.5 MB", m.config, 4), Math.floor(5e5 / kvBytesPerToken(m.config, 4)));
  assert.throws(() => parseBudget("lots", m.config, 2), TomeError);
  assert.throws(() => parseBudget("3 parsecs", m.config, 2), /unknown unit/);
  assert.throws(() => parseBudget("1B", m.config, 2), /at least one entry/);
  await assert.rejects(
    read({ ids: [1, 2, 3] }, { model: m, policy: "snapkv", budget: 16 }),
    /budget 16 is smaller than the entries snapkv protects/,
  );
  await assert.rejects(read({ ids: [1, 2, 3] }, { model: m, policy: "nope" }), /unknown policy "nope"/);
});

Deno.test({
  name: "cleanup engine test files",
  fn: async () => {
    for (const m of loaded.values()) await m.session.close();
    await Deno.remove(root, { recursive: true });
  },
  sanitizeResources: false,
});
