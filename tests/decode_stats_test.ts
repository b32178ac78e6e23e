/**
 * Statistics only when fetched: the graph builder's `If` branches on
 * onnxruntime, the decoder graph with `want_stats`/`want_retain` off against
 * the same graph with them on (identical logits and K/V, empty statistics),
 * and the engine's tokens and kept entries against the same engine whose every
 * run computes every statistic (how each run went before the flag).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Graph } from "../core/model/onnx/graph.ts";
import { ort } from "../core/model/ort.ts";
import { generate, type LoadedModel, loadModel, read } from "../core/mod.ts";
import { makeRetainingHeads } from "../core/model/make.ts";
import { graphOptionsFor, io, OPSETS } from "../core/model/onnx/decoder.ts";
import onnxProto from "onnx-proto";
import { STATS } from "../core/model/onnx/stats.ts";
import { emptyPast } from "../core/model/session.ts";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import type { ModelConfig } from "../core/model/config.ts";
import { inverseFrequencies, ropeTables } from "../core/model/rope.ts";
import { makeTinyModels } from "./model_fixtures.ts";
import { rng } from "./helpers.ts";

const root = await Deno.makeTempDir({ prefix: "tome-decode-stats-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const o = await ort();

Deno.test("graph builder: an If node runs only the taken branch, which reads outer values", async () => {
  const g = new Graph();
  const x = g.input("x", "float32", [3]);
  const cond = g.input("cond", "bool", []);
  const doubled = g.op("Mul", [x, g.floats([2], [])]); // outer value the branch reads
  const [a, b, c] = g.branch(
    cond,
    [{ name: "a", type: "float32" }, { name: "b", type: "float32" }, { name: "c", type: "float32" }],
    () => {
      const y = g.op("Add", [doubled, g.floats([1], [])]);
      return [y, y, doubled]; // a value twice, and an outer value as it is
    },
    () => [g.floats([], [0]), x, g.op("Neg", [x])],
  );
  for (const name of [a, b, c]) g.output(name, "float32", ["n"]);
  const path = join(root, "branch.onnx");
  await Deno.writeFile(path, g.encode(OPSETS));
  const s = await o.InferenceSession.create(path);
  const xs = Float32Array.of(1, -2, 0.5);
  const run = async (on: boolean) => {
    const out = await s.run({
      x: new o.Tensor("float32", xs, [3]),
      cond: new o.Tensor("bool", Uint8Array.of(+on), []),
    });
    return [a, b, c].map((n) => Array.from(out[n].data as Float32Array));
  };
  assert.deepEqual(await run(true), [[3, -3, 2], [3, -3, 2], [2, -4, 1]]);
  assert.deepEqual(await run(false), [[], [1, -2, 0.5], [-1, 2, -0.5]]);
  await s.release();
});

/** Random feeds for the decoder graph: S new tokens after a carried cache of P slots, `valid` of them per head. */
function randomFeeds(c: ModelConfig, seed: number, P: number, S: number, valid: number, windowStart: number) {
  const r = rng(seed);
  const rope = ropeTables(Array.from({ length: S }, (_, i) => P + i), inverseFrequencies(c));
  const ids = BigInt64Array.from({ length: S }, () => BigInt(Math.floor(r() * c.vocab)));
  const f: Record<string, InstanceType<typeof o.Tensor>> = {
    input_ids: new o.Tensor("int64", ids, [1, S]),
    rope_cos: new o.Tensor("float32", rope.cos, [1, 1, S, c.headDim]),
    rope_sin: new o.Tensor("float32", rope.sin, [1, 1, S, c.headDim]),
    window_start: new o.Tensor("int64", BigInt64Array.of(BigInt(windowStart)), [1]),
    past_lengths: new o.Tensor("float32", new Float32Array(c.layers * c.kvHeads).fill(valid), [c.layers, c.kvHeads]),
  };
  for (let l = 0; l < c.layers; l++) {
    const kv = () => Float32Array.from({ length: c.kvHeads * P * c.headDim }, () => r() - 0.5);
    f[io.pastKey(l)] = new o.Tensor("float32", kv(), [1, c.kvHeads, P, c.headDim]);
    f[io.pastValue(l)] = new o.Tensor("float32", kv(), [1, c.kvHeads, P, c.headDim]);
  }
  return f;
}

Deno.test("decoder graph without switches (WebGPU's): no If, no flags, every output that of the flags on", async () => {
  const dir = models.get("qwen3")!;
  const heads = join(root, "switchless-heads.safetensors");
  await makeRetainingHeads(heads, (await openCheckpoint(dir)).config, { hidden: 8, seed: 5 });
  const m = await loadModel(dir, { retainingHeads: heads });
  const c = m.config;
  const switched = await o.InferenceSession.create((await graphFor(m.checkpoint, m.graph)).path);
  const always = graphOptionsFor(m.graph, ["webgpu", "cpu"]);
  assert.equal(always.alwaysStats, true);
  assert.deepEqual(graphOptionsFor(m.graph, ["cpu"]), m.graph, "CPU graphs keep their options (and cache keys)");
  const path = (await graphFor(m.checkpoint, always)).path;
  const model = onnxProto.onnx.ModelProto.decode(await Deno.readFile(path));
  assert.ok(!model.graph!.node!.some((n) => n.opType === "If"), "an If node");
  const inputs = model.graph!.input!.map((i) => i.name);
  assert.ok(!inputs.includes(io.wantStats) && !inputs.includes(io.wantRetain), inputs.join(","));
  const plain = await o.InferenceSession.create(path);
  const feeds = randomFeeds(c, 8, 6, 5, 4, 2);
  const on = new o.Tensor("bool", Uint8Array.of(1), []);
  const want = await switched.run({ ...feeds, [io.wantStats]: on, [io.wantRetain]: on });
  const got = await plain.run(feeds);
  assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort());
  for (const name of Object.keys(want)) {
    assert.deepEqual(got[name].dims, want[name].dims, name);
    assert.deepEqual(got[name].data, want[name].data, name);
  }
  assert.ok(
    Object.keys(want).some((n) => n.startsWith("retain_")) && Object.keys(want).some((n) => n.startsWith("attn_")),
  );
  await Promise.all([switched.release(), plain.release(), m.session.close()]);
});

/**
 * A tiny model whose graph computes every statistic (and the retaining heads)
 * on every run, whatever the session asks for: the flags are set in the feeds
 * onnxruntime gets, below `ModelSession`.
 */
async function alwaysStats(dir: string, retainingHeads?: string): Promise<LoadedModel> {
  const m = await loadModel(dir, { retainingHeads });
  const inner = (m.session as unknown as { session: { run: (f: Record<string, unknown>, o: unknown) => unknown } })
    .session;
  const run = inner.run.bind(inner);
  const on = new o.Tensor("bool", Uint8Array.of(1), []);
  inner.run = (feeds, fetches) =>
    run({ ...feeds, [io.wantStats]: on, ...(retainingHeads ? { [io.wantRetain]: on } : {}) }, fetches);
  return m;
}

Deno.test("decoder graph: with want_stats off the statistics are empty and logits, K/V are those with it on", async () => {
  const m = await loadModel(models.get("qwen3")!);
  const c = m.config;
  // the session's graph, opened directly so the flag and the fetches are chosen here
  const s = await o.InferenceSession.create((await graphFor(m.checkpoint, m.graph)).path);
  const P = 5, S = 4;
  const feeds = (on: boolean) => ({
    ...randomFeeds(c, 3, P, S, P - 1, 1),
    [io.wantStats]: new o.Tensor("bool", Uint8Array.of(+on), []),
  });
  const fed = feeds(true);
  const on = await s.run(fed);
  const off = await s.run({ ...fed, [io.wantStats]: new o.Tensor("bool", Uint8Array.of(0), []) });
  const same = ["logits", ...Array.from({ length: c.layers }, (_, l) => [io.newKey(l), io.newValue(l)]).flat()];
  for (const name of same) assert.deepEqual(off[name].data, on[name].data, `${name} with the flag off`);
  for (let l = 0; l < c.layers; l++) {
    for (const st of STATS) {
      assert.deepEqual(on[io.stat(st, l)].dims, [1, c.kvHeads, P + S], `${io.stat(st, l)} with the flag on`);
      assert.deepEqual(off[io.stat(st, l)].dims, [1, c.kvHeads, 0], `${io.stat(st, l)} with the flag off`);
    }
  }
  // through ModelSession: the flag is on exactly when statistics are fetched
  const inner = (m.session as unknown as { session: { run: (f: Record<string, unknown>, o: unknown) => unknown } })
    .session;
  const real = inner.run.bind(inner);
  const flags: boolean[] = [];
  inner.run = (f, fetches) => {
    flags.push((f[io.wantStats] as { data: Uint8Array }).data[0] === 1);
    return real(f, fetches);
  };
  for (const stats of [[], ["all"], [...STATS], []] as const) {
    await m.session.run({
      ids: [1, 2],
      positions: [0, 1],
      past: emptyPast(c, "float32"),
      fetch: { stats: [...stats] },
    });
  }
  assert.deepEqual(flags, [false, true, true, false]);
  inner.run = real;
  await m.session.close();
  await s.release();
});

const CASES: { policy: string; budget: number; decodeBudget?: number }[] = [
  { policy: "h2o", budget: 48, decodeBudget: 40 }, // statistics at every generated token
  { policy: "snapkv", budget: 48 }, // statistics while reading only
  { policy: "tova", budget: 48, decodeBudget: 40 },
  { policy: "locret", budget: 96, decodeBudget: 80 }, // retaining heads (above its 64 stabilizers), no statistics
];

Deno.test("engine: tokens, logits and kept entries equal those of an engine computing every statistic on every run", async (t) => {
  const dir = models.get("qwen2")!;
  const heads = join(root, "retaining.safetensors");
  const plain = await loadModel(dir);
  await makeRetainingHeads(heads, plain.config, { hidden: 24, seed: 5 });
  const r = rng(29);
  const ids = Array.from({ length: 150 }, () => Math.floor(r() * plain.config.vocab));
  const suffix = [3, 1, 4, 1, 5];
  for (const cs of CASES) {
    await t.step(`${cs.policy}${cs.decodeBudget ? `, decode budget ${cs.decodeBudget}` : ""}`, async () => {
      const retainingHeads = cs.policy === "locret" ? heads : undefined;
      const mine = retainingHeads ? await loadModel(dir, { retainingHeads }) : plain;
      const before = await alwaysStats(dir, retainingHeads);
      const answer = async (m: LoadedModel) => {
        const st = await read({ ids }, {
          model: m,
          policy: cs.policy,
          budget: cs.budget,
          chunk: 32,
          question: suffix,
          decodeBudget: cs.decodeBudget,
        });
        const tokens: number[] = [];
        const logits: Float32Array[] = [];
        for await (
          const _ of generate(st, {
            suffix,
            maxTokens: 24,
            sampling: { temperature: 0 },
            eos: [],
            onToken: (id) => tokens.push(id),
            onLogits: (l) => logits.push(l.slice()),
          })
        ) { /* drain */ }
        const kept = Array.from(
          { length: m.config.layers },
          (_, l) => Array.from({ length: m.config.kvHeads }, (_, h) => Array.from(st.retained(l, h))),
        );
        return { tokens, logits, kept };
      };
      const a = await answer(mine), b = await answer(before);
      assert.equal(a.tokens.length, 24);
      assert.deepEqual(a.tokens, b.tokens);
      assert.deepEqual(a.kept, b.kept);
      for (let i = 0; i < a.logits.length; i++) assert.deepEqual(a.logits[i], b.logits[i], `logits of token ${i}`);
      const { decodeBudget } = cs;
      if (decodeBudget) assert.ok(a.kept.flat().every((k) => k.length <= decodeBudget), "decode budget kept");
      if (mine !== plain) await mine.session.close();
      await before.session.close();
    });
  }
  await plain.session.close();
});

Deno.test({
  name: "cleanup decode statistics test files",
  fn: async () => {
    await Deno.remove(root, { recursive: true });
  },
});
