/**
 * EMS (arXiv 2412.08521): its Global-Local score and its evict-then-merge,
 * each against a restatement written here. The score: the engine's selection
 * under `--policy ems --merge drop` equals the brute-force oracle's over the
 * reference forward's attention (`engine_oracle.ts`, the score restated there).
 * The merge: through the real engine on a tiny model, from the cache before a
 * chunk, the chunk's new K/V and what the selection kept, the oracle assigns
 * every evicted entry to its class and computes each centre's K/V and count;
 * the engine's cache must hold exactly that after every chunk. Then the pool,
 * the CLI end to end, and `tome estimate` equal to the measured run.
 */
import { walkMerges } from "./merge_oracle.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { KvStore } from "../core/engine/kv_store.ts";
import { planBudgets } from "../core/engine/plan.ts";
import { resolveRun } from "../core/engine/resolve.ts";
import { Sequence } from "../core/engine/sequence.ts";
import { EXIT, TomeError } from "../core/errors.ts";
import { Meter } from "../core/meter/meter.ts";
import { type LoadedModel, loadModel, read } from "../core/mod.ts";
import type { KvDtype } from "../core/model/config.ts";
import { loadWeights } from "../core/model/reference.ts";
import { emsMerge } from "../core/policies/merge/ems.ts";
import { mergeClass, nearestCentre } from "../kernels/class_merge.ts";
import { makePolicy } from "../core/policies/mod.ts";
import { oracleKept } from "./engine_oracle.ts";
import { mixedText } from "./fixture_text.ts";
import { hasShared, rng, SMOLLM2_TOKENIZER, tome } from "./helpers.ts";
import { makeTinyModels, writeTestTokenizer } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-ems-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const loaded = new Map<string, LoadedModel>();
async function tiny(name: string, kvDtype: KvDtype = "float32"): Promise<LoadedModel> {
  const key = `${name}/${kvDtype}`;
  if (!loaded.has(key)) loaded.set(key, await loadModel(models.get(name)!, { positions: "original", kvDtype }));
  return loaded.get(key)!;
}

type Vec = number[];
const dot = (a: Vec, b: Vec) => a.reduce((s, x, i) => s + x * b[i], 0);
const len = (a: Vec) => Math.sqrt(dot(a, a));
const cos = (a: Vec, b: Vec) => (len(a) * len(b) === 0 ? 0 : dot(a, b) / (len(a) * len(b)));

for (const name of ["llama", "qwen3"]) {
  Deno.test(`ems score (${name}): the selection equals brute force over the reference's attention`, async (t) => {
    const m = await tiny(name);
    const w = await loadWeights(m.checkpoint);
    const r = rng(23);
    const ids = Array.from({ length: 300 }, () => Math.floor(r() * m.config.vocab));
    const question = Array.from({ length: 9 }, () => Math.floor(r() * m.config.vocab));
    for (const patch of [true, false]) {
      await t.step(patch ? "question patch" : "last window", async () => {
        const opts = { policy: "ems", budget: 80, chunk: 48, question, patch, window: 16 };
        const state = await read({ ids }, { model: m, ...opts, questionPatch: patch, merge: "drop" });
        const expected = oracleKept(m.config, w, ids, opts);
        for (let l = 0; l < m.config.layers; l++) {
          for (let h = 0; h < m.config.kvHeads; h++) {
            assert.deepEqual(Array.from(state.retained(l, h)), expected[l][h], `layer ${l} head ${h}`);
          }
        }
      });
    }
  });
}

/**
 * EMS's merge restated with every evicted entry in the pool: each goes to the
 * kept entry of highest key cosine (the first on ties), or to the zero class
 * below `threshold`; a centre standing for m entries with members E becomes
 *   v = (m·v_c + Σ v_e)/(m + |E|),  k = ν·u/‖u‖,  u = m·k_c/‖k_c‖ + Σ k_e/‖k_e‖,  ν = (m‖k_c‖ + Σ‖k_e‖)/(m + |E|),
 * and stands for m + |E| (a dropped entry's count is forgotten).
 */
function emsOracle(
  all: { pos: number[]; k: Vec[]; v: Vec[] },
  kept: Set<number>,
  threshold: number,
  count: Map<number, number>,
  tally: { merged: number; zero: number; twice: number },
): Map<number, { k: Vec; v: Vec }> {
  const n = all.pos.length;
  const keptIdx = [...Array(n).keys()].filter((i) => kept.has(all.pos[i]));
  const out = new Map(keptIdx.map((i) => [all.pos[i], { k: all.k[i], v: all.v[i] }]));
  const classes = new Map<number, number[]>();
  for (let e = 0; e < n; e++) {
    if (kept.has(all.pos[e])) continue;
    count.delete(all.pos[e]);
    let best = -Infinity, c = -1;
    for (const j of keptIdx) if (cos(all.k[e], all.k[j]) > best) best = cos(all.k[e], all.k[j]), c = j;
    if (best < threshold) {
      tally.zero++;
      continue;
    }
    classes.set(c, [...(classes.get(c) ?? []), e]);
  }
  for (const [c, members] of classes) {
    const m = count.get(all.pos[c]) ?? 1;
    if (m > 1) tally.twice++;
    const total = m + members.length;
    const d = all.k[c].length;
    const u = new Array(d).fill(0);
    const unit = (x: Vec, weight: number) => x.forEach((y, t) => (u[t] += len(x) > 0 ? (weight * y) / len(x) : 0));
    unit(all.k[c], m);
    members.forEach((e) => unit(all.k[e], 1));
    const nu = (m * len(all.k[c]) + members.reduce((s, e) => s + len(all.k[e]), 0)) / total;
    const v = all.v[c].map((y, t) => (m * y + members.reduce((s, e) => s + all.v[e][t], 0)) / total);
    out.set(all.pos[c], { k: u.map((y) => (nu * y) / len(u)), v });
    count.set(all.pos[c], total);
    tally.merged += members.length;
  }
  return out;
}

/** Reads random chunks with policy ems and its merge (the whole evicted set as pool), checking every head after every chunk. */
async function checkMerge(kvDtype: KvDtype, threshold: number) {
  const model = await tiny("llama", kvDtype);
  const { config } = model;
  const o = { budget: 12, chunk: 8, chunks: 14, window: 4, seed: 29 };
  const plan = planBudgets(await makePolicy("ems", config), config, {
    budget: o.budget,
    merge: emsMerge(threshold, 100),
  });
  const counts = new Map<string, Map<number, number>>();
  const tally = { merged: 0, zero: 0, twice: 0 };
  await walkMerges(model, kvDtype, plan.prefill, o, ({ l, h, all, after }) => {
    const key = `${l}/${h}`;
    if (!counts.has(key)) counts.set(key, new Map());
    return emsOracle(all, new Set(after.pos), threshold, counts.get(key)!, tally);
  });
  return tally;
}

for (const kvDtype of ["float32", "float16"] as const) {
  Deno.test(`ems merge (${kvDtype}): evicted entries join their most similar kept key's class, the zero class drops the rest`, async () => {
    // threshold 0.1 on the tiny random model: some entries merge, some fall in the zero class, some centres twice
    const tally = await checkMerge(kvDtype, 0.1);
    assert.ok(tally.merged > 0 && tally.zero > 0 && tally.twice > 0, JSON.stringify(tally));
  });
}

Deno.test("kernels: the nearest class centre by cosine and the class merge equal plain loops", () => {
  const r = rng(37);
  const n = 11, d = 7;
  const x = Float32Array.from({ length: n * d }, () => r() * 2 - 1);
  x.fill(0, 2 * d, 3 * d); // a zero row: cosine 0 against it
  x.set(x.subarray(5 * d, 6 * d), 8 * d); // 8 repeats centre 5: the first of equal centres wins
  const row = (a: Float32Array, i: number) => Array.from(a.subarray(i * d, i * d + d));
  const queries = Int32Array.from([0, 3, 9, 10]), centres = Int32Array.from([1, 2, 5, 8]);
  const { index, similarity } = nearestCentre(x, d, queries, centres);
  queries.forEach((i, a) => {
    const sims = [...centres].map((j) => cos(row(x, i), row(x, j)));
    const best = sims.indexOf(Math.max(...sims));
    assert.equal(index[a], centres[best]);
    assert.ok(Math.abs(similarity[a] - sims[best]) < 1e-6);
  });
  const keys = x.slice(), values = Float32Array.from({ length: n * d }, () => r());
  const members = [0, 3, 9];
  const total = mergeClass(keys, values, d, 1, 3, members);
  assert.equal(total, 6);
  const ks = [1, ...members].map((i) => row(x, i)), ws = [3, 1, 1, 1];
  const u = ks.reduce((acc, k, j) => acc.map((y, t) => y + (ws[j] * k[t]) / len(k)), new Array(d).fill(0));
  const nu = ks.reduce((s, k, j) => s + ws[j] * len(k), 0) / 6;
  row(keys, 1).forEach((y, t) => assert.ok(Math.abs(y - (nu * u[t]) / len(u)) < 1e-5));
  assert.ok(Math.abs(len(row(keys, 1)) - nu) < 1e-5, "the merged key has the members' mean norm");
});

Deno.test("ems merge: the pool is the ⌈budget·share⌉ best-scored evicted entries; the rest are evicted unseen", () => {
  const d = 3, n = 10;
  // every evicted entry (4…9) has the key of kept entry 0, so any of them in the pool merges into 0
  const keys = new Float32Array(n * d), values = new Float32Array(n * d);
  const r = rng(31);
  for (let i = 0; i < n; i++) {
    const k = i >= 4 || i === 0 ? [1, 2, 3] : [-3, 1, 0.5 * i];
    keys.set(k, i * d);
    values.set([r(), r(), r()], i * d);
  }
  const importance = Float32Array.from([9, 9, 9, 9, 0.1, 0.7, 0.3, 0.9, 0.2, 0.5]);
  const keep = Int32Array.from([0, 1, 2, 3]);
  const v0 = Array.from(values.subarray(0, d));
  const changed = emsMerge(0.5, 0.5).merge({
    layer: 0,
    head: 0,
    n,
    d,
    keys,
    values,
    keep,
    protect: { sinks: 0, recent: 0 },
    positions: Int32Array.from({ length: n }, (_, i) => i),
    importance,
  });
  assert.deepEqual(Array.from(changed), [0]);
  // pool ⌈4 · 0.5⌉ = 2: entries 7 (0.9) and 5 (0.7)
  const want = v0.map((x, t) => (x + values[7 * d + t] + values[5 * d + t]) / 3);
  want.forEach((x, t) => assert.ok(Math.abs(values[t] - x) < 1e-6));
  [1, 2, 3].forEach((t) => assert.ok(Math.abs(keys[t - 1] - t) < 1e-6)); // alike keys: the centre's key is unchanged
});

Deno.test("--policy ems brings its merge; --merge replaces it, drop turns it off; the entry count is drop-only's", async () => {
  const model = await tiny("llama");
  const { config } = model;
  const run = await resolveRun(config, { policy: "ems", budget: 12 });
  assert.equal(run.merge, "ems");
  assert.equal(run.plan.prefill.merge?.name, "ems");
  assert.equal((await resolveRun(config, { policy: "ems", budget: 12, merge: "none" })).merge, "ems");
  const dropped = await resolveRun(config, { policy: "ems", budget: 12, merge: "drop" });
  assert.equal(dropped.merge, "drop");
  assert.equal(dropped.plan.prefill.merge, undefined);
  assert.equal((await resolveRun(config, { policy: "ems", budget: 12, merge: "d2o" })).plan.prefill.merge?.name, "d2o");
  assert.equal((await resolveRun(config, { policy: "h2o", budget: 12, merge: "ems" })).merge, "ems");
  assert.equal((await resolveRun(config, { policy: "h2o", budget: 12, merge: "drop" })).merge, null);
  assert.equal((await resolveRun(config, { policy: "h2o", budget: 12 })).merge, null);
  // two runs never share a merger's counts
  assert.notEqual(
    (await resolveRun(config, { policy: "ems", budget: 12 })).plan.prefill.merge,
    run.plan.prefill.merge,
  );
  await assert.rejects(
    () => resolveRun(config, { policy: "ems", merge: "centroid" }),
    (e: unknown) => e instanceof TomeError && e.kind === "usage" && /unknown method "centroid"/.test(e.message),
  );
  const entries = async (merge: string) => {
    const r = await resolveRun(config, { policy: "ems", budget: 12, merge });
    const seq = new Sequence(model.session, new KvStore(config, "float32"), new Meter(r.tokenBytes));
    const g = rng(5);
    for (let i = 0; i < 5; i++) {
      await seq.step(Array.from({ length: 8 }, () => 4 + Math.floor(g() * 300)), r.plan.prefill, { window: 4 });
    }
    return seq.store.layers.map((c) => [...c.lengths]).flat();
  };
  assert.deepEqual(await entries("none"), await entries("drop"));
});

Deno.test("tome ask --policy ems answers; tome estimate --policy ems predicts its tokens and KV bytes exactly", async () => {
  const env = { TOME_CACHE: join(root, "cache"), TOME_MODEL: "" };
  const tokenizerDir = hasShared ? SMOLLM2_TOKENIZER : await writeTestTokenizer(join(root, "tok"));
  const model = join(root, "tiny-cli");
  const made = await tome(["make-model", "tiny", "--out", model, "--tokenizer", tokenizerDir, "--arch", "qwen2"], {
    env,
  });
  assert.equal(made.code, 0, made.stderr);
  const doc = join(root, "doc.txt");
  await Deno.writeTextFile(doc, mixedText(41, 4_000) + "\nThe pass code of Natasha is 48213.\n" + mixedText(42, 2_000));
  const q = "What is the pass code of Natasha?";
  const args = ["-m", model, "--max-tokens", "6", "--budget", "60", "--chunk", "48", "--policy", "ems"];
  const e = await tome(["estimate", doc, ...args, "--question", q, "--json"], { env });
  assert.equal(e.code, 0, e.stderr);
  const est = JSON.parse(e.stdout);
  const a = await tome(["ask", q, doc, ...args, "--json"], { env });
  assert.equal(a.code, 0, a.stderr);
  const run = JSON.parse(a.stdout);
  assert.ok(run.tokens_read > 600, "the document is read in many chunks, so ems evicts and merges");
  assert.equal(est.tokens, run.tokens_read);
  assert.equal(est.predicted.kv_peak_bytes, run.kv_peak_bytes);
  assert.equal(est.predicted.kv_full_bytes, run.kv_full_bytes);
  const bad = await tome(["ask", q, doc, ...args, "--merge", "centroid"], { env });
  assert.equal(bad.code, EXIT.usage);
  assert.match(bad.stderr, /^tome: --merge: unknown method "centroid"/);
  assert.equal(bad.stderr.trim().split("\n").length, 1);
});

Deno.test({
  name: "cleanup",
  fn: async () => {
    for (const m of loaded.values()) await m.session.close();
    await Deno.remove(root, { recursive: true });
  },
});
