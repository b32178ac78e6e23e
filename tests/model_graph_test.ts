/**
 * The ONNX decoder graph against the TypeScript reference forward pass, for
 * every architecture: logits, new K/V and attention statistics, in one pass and
 * in chunks with the cache carried, in both position modes, with f16 KV; and
 * at every weight type against the reference fed the weights as stored.
 */
import { STATS as GRAPH_STATS } from "../core/model/onnx/stats.ts";
import assert from "node:assert/strict";
import { join } from "node:path";
import { graphFor } from "../core/model/cache.ts";
import { type Checkpoint, openCheckpoint } from "../core/model/checkpoint.ts";
import { DEFAULT_GRAPH_OPTIONS, DEFAULT_QUANT, type GraphOptions, resolveWeights } from "../core/model/onnx/decoder.ts";
import { makeRandomModel, makeRetainingHeads, SIZES } from "../core/model/make.ts";
import onnxProto from "onnx-proto";
import { appendEntries, forward, loadWeights, type Past, type Weights } from "../core/model/reference.ts";
import type { PositionMode } from "../core/model/config.ts";
import { emptyPast, type KvArray, ModelSession, type StatName } from "../core/model/session.ts";
import { bruteForceStats, makeTinyModels, maxAbsDiff, TINY_MODELS } from "./model_fixtures.ts";
import { rng } from "./helpers.ts";
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "../kernels/fp16.ts";
import { dequantizeBlocks, quantizeBlocks } from "../kernels/quant.ts";

const root = await Deno.makeTempDir({ prefix: "tome-graph-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const STATS: StatName[] = [...GRAPH_STATS];
const TOL = 1e-4;

interface Loaded {
  ckpt: Checkpoint;
  weights: Weights;
  session: (opts: Partial<GraphOptions>) => Promise<ModelSession>;
}

async function load(dir: string): Promise<Loaded> {
  const ckpt = await openCheckpoint(dir);
  const sessions: ModelSession[] = [];
  return {
    ckpt,
    weights: await loadWeights(ckpt),
    session: async (o) => {
      const opts = { ...DEFAULT_GRAPH_OPTIONS, logits: "all" as const, ...o };
      const s = await ModelSession.open(ckpt.config, opts, (await graphFor(ckpt, opts)).path);
      sessions.push(s);
      return s;
    },
  };
}

function randomIds(n: number, vocab: number, seed: number): number[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/** Runs one graph pass and the reference on the same inputs; asserts logits, new K/V and statistics agree. */
async function compareRun(
  m: Loaded,
  session: ModelSession,
  ids: number[],
  positions: number[],
  past: Past,
  mode: PositionMode,
  windowStart: number,
) {
  const c = m.ckpt.config;
  const r = await session.run({
    ids,
    positions,
    past: past.length === 0 ? emptyPast(c, "float32") : {
      keys: past.layers.map((l) => l.keys),
      values: past.layers.map((l) => l.values),
      lengths: past.lengths?.flat() ?? new Array(c.layers * c.kvHeads).fill(past.length),
    },
    windowStart,
    fetch: { stats: STATS },
  });
  const e = forward(c, m.weights, ids, positions, past, mode);
  assert.ok(maxAbsDiff(r.logits!, e.logits) < TOL, `logits differ by ${maxAbsDiff(r.logits!, e.logits)}`);
  const T = past.length + ids.length;
  for (let l = 0; l < c.layers; l++) {
    assert.ok(maxAbsDiff(r.newKeys[l], e.newKeys[l]) < TOL, `layer ${l} new keys`);
    assert.ok(maxAbsDiff(r.newValues[l], e.newValues[l]) < TOL, `layer ${l} new values`);
    const brute = bruteForceStats(e.probs[l], c.heads, c.kvHeads, ids.length, T, windowStart);
    for (const s of STATS) {
      const d = maxAbsDiff(r.stats[s]![l], brute[s]);
      assert.ok(d < TOL, `layer ${l} attn_${s} differs by ${d}`);
    }
  }
  return { r, e };
}

/** Feeds `ids` in chunks, carrying the graph's own new K/V as the cache; returns logits for every position. */
async function chunked(session: ModelSession, m: Loaded, ids: number[], chunk: number) {
  const { layers, kvHeads: K, headDim: d, vocab: V } = m.ckpt.config;
  const f16 = session.graph.kvDtype === "float16";
  let keys: KvArray[] = Array.from({ length: layers }, () => (f16 ? new Uint16Array(0) : new Float32Array(0)));
  let values = keys.slice();
  const logits = new Float32Array(ids.length * V);
  for (let at = 0; at < ids.length; at += chunk) {
    const part = ids.slice(at, at + chunk);
    const r = await session.run({
      ids: part,
      positions: part.map((_, i) => at + i),
      past: { keys, values, lengths: new Array(layers * K).fill(at) },
    });
    logits.set(r.logits!, at * V);
    keys = keys.map((k, l) => appendKv(k, at, r.newKeys[l], part.length, K, d));
    values = values.map((v, l) => appendKv(v, at, r.newValues[l], part.length, K, d));
  }
  return logits;
}

function appendKv(past: KvArray, P: number, fresh: KvArray, S: number, K: number, d: number): KvArray {
  if (past instanceof Float32Array) return appendEntries(past, P, fresh as Float32Array, S, K, d);
  const y = new Uint16Array(K * (P + S) * d);
  for (let h = 0; h < K; h++) {
    y.set(past.subarray(h * P * d, (h + 1) * P * d), h * (P + S) * d);
    y.set(fresh.subarray(h * S * d, (h + 1) * S * d), (h * (P + S) + P) * d);
  }
  return y;
}

for (const { name } of TINY_MODELS) {
  Deno.test(`graph = reference: ${name}`, async (t) => {
    const m = await load(models.get(name)!);
    const c = m.ckpt.config;
    const ids = randomIds(70, c.vocab, 11);
    const positions = ids.map((_, i) => i);
    const full = forward(c, m.weights, ids, positions);
    const original = await m.session({ positions: "original" });

    await t.step("one pass: logits, new K/V, statistics (window, all, max, last)", async () => {
      await compareRun(m, original, ids, positions, { length: 0, layers: [] }, "original", 60);
    });

    await t.step("chunks of 1, 7 and 64 with the full cache carried give the one-pass logits", async () => {
      for (const chunk of [1, 7, 64]) {
        const logits = await chunked(original, m, ids, chunk);
        const d = maxAbsDiff(logits, full.logits);
        assert.ok(d < TOL, `chunk ${chunk}: logits differ by ${d}`);
      }
    });

    await t.step("statistics over a carried cache (P > 0) match brute force", async () => {
      const head = forward(c, m.weights, ids.slice(0, 40), positions.slice(0, 40));
      const past: Past = { length: 40, layers: head.newKeys.map((k, l) => ({ keys: k, values: head.newValues[l] })) };
      await compareRun(m, original, ids.slice(40, 52), positions.slice(40, 52), past, "original", 9);
      await compareRun(m, original, ids.slice(40, 41), positions.slice(40, 41), past, "original", 0);
    });

    await t.step("buffers beyond their valid entries: per-head lengths, garbage in the empty slots", async () => {
      const head = forward(c, m.weights, ids.slice(0, 20), positions.slice(0, 20));
      const cap = 26;
      const r = rng(3);
      const lengths = Array.from(
        { length: c.layers },
        (_, l) => Array.from({ length: c.kvHeads }, (_, h) => 20 - 3 * h - l),
      );
      // the valid entries of head h are its first lengths[l][h] of the 20 computed; the rest is finite garbage
      const widen = (x: Float32Array, l: number) => {
        const y = Float32Array.from({ length: c.kvHeads * cap * c.headDim }, () => 50 * (r() - 0.5));
        for (let h = 0; h < c.kvHeads; h++) {
          y.set(x.subarray(h * 20 * c.headDim, (h * 20 + lengths[l][h]) * c.headDim), h * cap * c.headDim);
        }
        return y;
      };
      const past: Past = {
        length: cap,
        layers: head.newKeys.map((k, l) => ({ keys: widen(k, l), values: widen(head.newValues[l], l) })),
        lengths,
      };
      await compareRun(m, original, ids.slice(20, 27), positions.slice(20, 27), past, "original", 3);
    });

    await t.step("compact positions: unrotated keys, a per-head evicted cache rotated to its slots", async () => {
      const compact = await m.session({ positions: "compact" });
      const head = forward(c, m.weights, ids.slice(0, 30), positions.slice(0, 30), undefined, "compact");
      // keep 8 of 30 entries, a different subset for each KV head, in original order
      const keep = (h: number) => [0, 1, 2, 5 + h, 8 + h, 13, 21 + h, 29];
      const P = 8;
      const pick = (x: Float32Array) => {
        const y = new Float32Array(c.kvHeads * P * c.headDim);
        for (let h = 0; h < c.kvHeads; h++) {
          keep(h).forEach((src, dst) =>
            y.set(x.subarray((h * 30 + src) * c.headDim, (h * 30 + src + 1) * c.headDim), (h * P + dst) * c.headDim)
          );
        }
        return y;
      };
      const past: Past = {
        length: P,
        layers: head.newKeys.map((k, l) => ({ keys: pick(k), values: pick(head.newValues[l]) })),
        positions: Array.from({ length: P }, (_, i) => i),
      };
      const newPositions = Array.from({ length: 10 }, (_, i) => P + i);
      await compareRun(m, compact, ids.slice(30, 40), newPositions, past, "compact", 4);
      // with slots as positions and nothing evicted, compact is the original model
      const logits = await chunked(compact, m, ids, 7);
      assert.ok(maxAbsDiff(logits, full.logits) < TOL);
    });

    await t.step(
      "compact positions, layers of different capacities: each rotates its keys to its own slots",
      async () => {
        const compact = await m.session({ positions: "compact" });
        const P = 9;
        const head = forward(c, m.weights, ids.slice(0, P), positions.slice(0, P), undefined, "compact");
        // layer l's buffer holds the P entries then 5·l finite garbage slots past every head's length
        const r = rng(4);
        const widen = (x: Float32Array, cap: number) => {
          const y = Float32Array.from({ length: c.kvHeads * cap * c.headDim }, () => 50 * (r() - 0.5));
          for (let h = 0; h < c.kvHeads; h++) {
            y.set(x.subarray(h * P * c.headDim, (h + 1) * P * c.headDim), h * cap * c.headDim);
          }
          return y;
        };
        const part = ids.slice(P, P + 6);
        const past: Past = {
          length: P,
          layers: head.newKeys.map((k, l) => ({ keys: k, values: head.newValues[l] })),
          positions: Array.from({ length: P }, (_, i) => i),
        };
        const e = forward(c, m.weights, part, part.map((_, i) => P + i), past, "compact");
        // larger capacities first, then smaller ones: the session's slot tables are reused, not regrown
        for (const extra of [20, 0]) {
          const caps = Array.from({ length: c.layers }, (_, l) => P + 5 * l + extra);
          const got = await compact.run({
            ids: part,
            positions: part.map((_, i) => P + i),
            past: {
              keys: head.newKeys.map((k, l) => widen(k, caps[l])),
              values: head.newValues.map((v, l) => widen(v, caps[l])),
              lengths: new Array(c.layers * c.kvHeads).fill(P),
            },
          });
          const d = maxAbsDiff(got.logits!, e.logits);
          assert.ok(d < TOL, `capacities ${caps}: logits differ by ${d}`);
          assert.ok(maxAbsDiff(got.logits!, full.logits.slice(P * c.vocab, (P + 6) * c.vocab)) < TOL);
        }
      },
    );

    await t.step("f16 KV cache within 2e-2 relative of f32", async () => {
      const f16 = await m.session({ kvDtype: "float16" });
      const logits = await chunked(f16, m, ids, 7);
      const rel = maxAbsDiff(logits, full.logits) / maxAbsDiff(full.logits, new Float32Array(full.logits.length));
      assert.ok(rel < 2e-2, `relative difference ${rel}`);
      assert.ok(rel > 0, "f16 should not be bit-identical to f32");
    });

    await t.step("f16 weights within 2e-2 relative of f32", async () => {
      const f16w = await m.session({ weights: "f16" });
      const r = await f16w.run({ ids, positions, past: emptyPast(c, "float32") });
      const rel = maxAbsDiff(r.logits!, full.logits) / maxAbsDiff(full.logits, new Float32Array(full.logits.length));
      assert.ok(rel < 2e-2, `relative difference ${rel}`);
    });
  });
}

/**
 * The reference's weights as a graph of this type stores them: every matrix (2-D tensor: linear layers,
 * embedding, LM head) rounded to 16 bits or quantized and dequantized per block of its rows; norms and
 * biases (1-D) unchanged.
 */
function storedWeights(w: Weights, opts: GraphOptions): Weights {
  const q = opts.quant!;
  const store = (x: Float32Array, cols: number): Float32Array => {
    switch (opts.weights) {
      case "f16":
        return f16ToF32(f32ToF16(x));
      case "bf16":
        return bf16ToF32(f32ToBf16(x));
      case "q8":
      case "q4": {
        const spec = { bits: opts.weights === "q8" ? 8 as const : 4 as const, block: q.block, symmetric: q.symmetric };
        return dequantizeBlocks(quantizeBlocks(x, x.length / cols, cols, spec));
      }
      default:
        return x;
    }
  };
  const D = w.norm.length;
  const embed = store(w.embed, D);
  return {
    embed,
    norm: w.norm,
    lmHead: w.lmHead === w.embed ? embed : store(w.lmHead, D),
    layers: w.layers.map((l) => ({
      ...l,
      wq: store(l.wq, D),
      wk: store(l.wk, D),
      wv: store(l.wv, D),
      wo: store(l.wo, l.wo.length / D),
      wGate: store(l.wGate, D),
      wUp: store(l.wUp, D),
      wDown: store(l.wDown, l.wDown.length / D),
    })),
  };
}

const WEIGHT_CASES: Partial<GraphOptions>[] = [
  { weights: "f16" },
  { weights: "bf16" },
  { weights: "q8", quant: { block: 32, symmetric: true, accuracyLevel: 0 } },
  { weights: "q8", quant: { block: 64, symmetric: false, accuracyLevel: 0 } },
  { weights: "q4", quant: { block: 32, symmetric: true, accuracyLevel: 0 } },
  { weights: "q4", quant: { block: 16, symmetric: false, accuracyLevel: 0 } },
];

for (const name of ["llama", "qwen2", "qwen3"]) {
  Deno.test(`weight types = reference on the weights as stored: ${name}`, async (t) => {
    const m = await load(models.get(name)!);
    const c = m.ckpt.config;
    const ids = randomIds(40, c.vocab, 5);
    const positions = ids.map((_, i) => i);
    for (const wcase of WEIGHT_CASES) {
      const opts = { ...DEFAULT_GRAPH_OPTIONS, logits: "all" as const, quant: DEFAULT_QUANT, ...wcase };
      const label = opts.weights.startsWith("q") ? `${opts.weights} ${JSON.stringify(opts.quant)}` : opts.weights;
      await t.step(`${label}: logits, K/V, statistics ≤ ${TOL}`, async () => {
        const stored: Loaded = { ...m, weights: storedWeights(m.weights, opts) };
        const session = await m.session(opts);
        await compareRun(stored, session, ids, positions, { length: 0, layers: [] }, "original", 30);
        // and the type changes the model: the original weights are further away
        const r = await session.run({ ids, positions, past: emptyPast(c, "float32") });
        assert.ok(maxAbsDiff(r.logits!, forward(c, m.weights, ids, positions).logits) > TOL);
      });
    }
    // int8 activations (one scale per block of 32, max/127) measured 1.5–1.9% of the logits' range on these
    // models (random weights, 2 layers); the bound leaves that margin, a real error (a wrong block, scale
    // or zero point) moves logits by the whole range
    await t.step("accuracy level 4 (int8 activations): within 3% of the logits' range", async () => {
      for (const weights of ["q8", "q4"] as const) {
        const opts = { ...DEFAULT_GRAPH_OPTIONS, logits: "all" as const, weights, quant: DEFAULT_QUANT };
        const session = await m.session(opts);
        const r = await session.run({ ids, positions, past: emptyPast(c, "float32") });
        const e = forward(c, storedWeights(m.weights, opts), ids, positions).logits;
        const rel = maxAbsDiff(r.logits!, e) / maxAbsDiff(e, new Float32Array(e.length));
        if (Deno.env.get("TOME_SHOW")) console.log(`${weights} accuracy level 4: relative difference ${rel}`);
        assert.ok(rel < 3e-2, `${weights}: relative difference ${rel}`);
      }
    });
  });
}

Deno.test("--weights auto is the checkpoint's own precision", async () => {
  const f32 = await openCheckpoint(models.get("llama")!);
  assert.equal(resolveWeights(f32), "f32");
  assert.equal(resolveWeights(f32, "q4"), "q4");
  const dir = join(root, "bf16-model");
  await makeRandomModel(dir, {
    arch: "llama",
    shape: SIZES.tiny,
    seed: 1,
    dtype: "BF16",
    tokenizer: join(root, "models", "tokenizer"),
  });
  const bf16 = await openCheckpoint(dir);
  assert.equal(resolveWeights(bf16), "bf16");
  assert.equal(resolveWeights(bf16, "auto"), "bf16");
  assert.equal(resolveWeights(bf16, "f32"), "f32");
});

Deno.test("graph cache: a second request does not rebuild; options change the key", async () => {
  const ckpt = await openCheckpoint(models.get("llama")!);
  const opts = { ...DEFAULT_GRAPH_OPTIONS, logits: "last" as const };
  const first = await graphFor(ckpt, opts);
  const second = await graphFor(ckpt, opts);
  assert.equal(second.built, false);
  assert.equal(second.path, first.path);
  const other = await graphFor(ckpt, { ...opts, kvDtype: "float16" });
  assert.notEqual(other.path, first.path);
  const entries = [];
  for await (const e of Deno.readDir(join(root, "cache", "graphs"))) entries.push(e.name);
  assert.ok(entries.every((e) => !e.startsWith(".building-")), "no partial builds left behind");
});

Deno.test("last-position logits equal the last row of all-position logits", async () => {
  const m = await load(models.get("qwen2")!);
  const ids = randomIds(9, m.ckpt.config.vocab, 3);
  const positions = ids.map((_, i) => i);
  const past = emptyPast(m.ckpt.config, "float32");
  const all = await (await m.session({ logits: "all" })).run({ ids, positions, past });
  const last = await (await m.session({ logits: "last" })).run({ ids, positions, past });
  const V = m.ckpt.config.vocab;
  assert.equal(last.logits!.length, V);
  assert.ok(maxAbsDiff(last.logits!, all.logits!.subarray(8 * V)) < 1e-5);
});

Deno.test("RoPE tables are inputs: no Cos/Sin anywhere in the graph, in either position mode or with retaining heads", async () => {
  const ckpt = await openCheckpoint(models.get("qwen3")!);
  const heads = join(root, "retaining.safetensors");
  await makeRetainingHeads(heads, ckpt.config, { hidden: 4, seed: 2 });
  for (const positions of ["original", "compact"] as const) {
    for (const retainingHeads of [undefined, heads]) {
      const path = (await graphFor(ckpt, { ...DEFAULT_GRAPH_OPTIONS, positions, retainingHeads })).path;
      const g = onnxProto.onnx.ModelProto.decode(await Deno.readFile(path)).graph!;
      const label = `${positions}${retainingHeads ? ", retaining heads" : ""}`;
      assert.deepEqual(g.node!.filter((n) => n.opType === "Cos" || n.opType === "Sin"), [], label);
      const inputs = g.input!.map((i) => i.name);
      const tables = ["rope_cos", "rope_sin", ...(positions === "compact" ? ["past_rope_cos", "past_rope_sin"] : [])];
      assert.deepEqual(inputs.filter((n) => /rope|^positions$/.test(n!)), tables, label);
    }
  }
});

Deno.test({
  name: "cleanup graph test files",
  fn: () => Deno.remove(root, { recursive: true }),
  sanitizeResources: false,
});
