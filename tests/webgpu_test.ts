/**
 * The GPU path on whatever WebGPU adapter this machine has (CI: Mesa ≥ 25
 * lavapipe, software Vulkan): every node of the graph placed on WebGPU except
 * onnxruntime's shape computations, the graph against the reference forward
 * pass, the engine's chunked prefill + decode against one unchunked pass, and
 * `tome ask` answering on the retrieval model. With no adapter these are
 * skipped with a one-line reason. Shapes are kept few: lavapipe compiles a
 * shader per new shape.
 */
import assert from "node:assert/strict";
import { Ajv } from "ajv";
import schema from "./schemas/answer.schema.json" with { type: "json" };
import { join } from "node:path";
import onnxProto from "onnx-proto";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { vulkanLoader, webgpuAdapter } from "../core/model/device.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions, graphOptionsFor } from "../core/model/onnx/decoder.ts";
import { STATS } from "../core/model/onnx/stats.ts";
import { appendEntries, forward, loadWeights, type Past } from "../core/model/reference.ts";
import { emptyPast, ModelSession } from "../core/model/session.ts";
import { makeRetainingHeads } from "../core/model/make.ts";
import { generate, loadModel, read } from "../core/mod.ts";
import { haystack, scoreAnswer } from "../core/eval/haystack.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { TomeError } from "../core/errors.ts";
import { mixedText } from "./fixture_text.ts";
import { makeRetrievalCli, rng, ROOT, tempDir, tome } from "./helpers.ts";
import { bruteForceStats, makeTinyModels, maxAbsDiff, writeTestTokenizer } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-webgpu-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const WEBGPU = ["webgpu"];

/** Why the WebGPU tests cannot run here, or null: no loader, no adapter, or one Dawn refuses. */
async function whyNot(): Promise<{ reason: string | null; models: Map<string, string> | null }> {
  if (!vulkanLoader()) return { reason: "no Vulkan loader (libvulkan.so.1)", models: null };
  const adapter = await webgpuAdapter();
  if (!adapter) return { reason: "no WebGPU adapter", models: null };
  const models = await makeTinyModels(join(root, "models"));
  const ckpt = await openCheckpoint(models.get("llama")!);
  const opts = graphOptionsFor(DEFAULT_GRAPH_OPTIONS, WEBGPU);
  try {
    await (await ModelSession.open(ckpt.config, opts, (await graphFor(ckpt, opts)).path, {
      executionProviders: WEBGPU,
    })).close();
  } catch (err) {
    if (err instanceof TomeError && /adapter/i.test(err.message)) return { reason: err.message, models: null };
    throw err;
  }
  return { reason: null, models };
}
const { reason, models } = await whyNot();
if (reason) {
  console.log(`webgpu_test: skipping the WebGPU tests: ${reason} (CI installs Mesa >= 25 lavapipe; see README "GPU")`);
}
const ignore = reason !== null;

/** ONNX ops onnxruntime keeps on the CPU when they compute shapes (int64 shape tensors). */
const SHAPE_OPS = new Set(["Shape", "Gather", "Sub", "Add", "Mul", "Concat", "Unsqueeze", "Squeeze", "Split", "Cast"]);

/**
 * Nodes of the graph that only compute shapes: a `Shape`, or a node whose
 * inputs are all initializers or outputs of such nodes (restated from the
 * model file, independently of onnxruntime).
 */
async function shapeNodes(path: string): Promise<{ ops: Map<string, string>; shape: Set<string> }> {
  const model = onnxProto.onnx.ModelProto.decode(await Deno.readFile(path));
  const g = model.graph!;
  const known = new Set(g.initializer!.map((t) => t.name!));
  const ops = new Map<string, string>();
  const shape = new Set<string>();
  const visit = (nodes: typeof g.node) => {
    for (const n of nodes!) {
      ops.set(n.name!, n.opType!);
      const inputs = n.input!.filter((i) => i !== "");
      if (n.opType === "Shape" || (inputs.length > 0 && inputs.every((i) => known.has(i)))) {
        shape.add(n.name!);
        for (const o of n.output!) known.add(o);
      }
      for (const a of n.attribute ?? []) if (a.g) visit(a.g.node); // an If's branches (none in graphs for WebGPU)
    }
  };
  visit(g.node);
  return { ops, shape };
}

/** onnxruntime's node placement for a graph on WebGPU, from its verbose log (TOME_DEBUG=1), in a child process. */
async function placement(path: string, opts: GraphOptions, config: string): Promise<Map<string, string[]>> {
  const session = new URL("../core/model/session.ts", import.meta.url).href;
  const code = `import { ModelSession } from "${session}";
    const s = await ModelSession.open(${config}, ${JSON.stringify(opts)}, ${JSON.stringify(path)},
      { executionProviders: ["webgpu"] });
    await s.close();`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    cwd: ROOT,
    env: { TOME_DEBUG: "1", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const log = new TextDecoder().decode(out.stderr);
  assert.equal(out.code, 0, log.slice(-2000));
  const placed = new Map<string, string[]>();
  let ep = "";
  for (const line of log.split("\n")) {
    const head = line.match(/Node\(s\) placed on \[(\w+)\]/);
    if (head) ep = head[1];
    else if (ep && /VerifyEachNodeIsAssignedToAnEp\]\s{3}\S/.test(line)) {
      const m = line.match(/\]\s+\S+ \((.+)\)\s*$/);
      if (m) placed.set(ep, [...(placed.get(ep) ?? []), m[1]]);
    } else if (!/VerifyEachNodeIsAssignedToAnEp/.test(line)) ep = "";
  }
  return placed;
}

Deno.test({
  name: "webgpu: every node on WebGPU but shape computations",
  ignore,
  fn: async (t) => {
    const ckpt = await openCheckpoint(models!.get("qwen3")!);
    const heads = join(root, "retaining.safetensors");
    await makeRetainingHeads(heads, ckpt.config, { hidden: 8, seed: 3 });
    const variants: [string, Partial<GraphOptions>][] = [
      ["original", { positions: "original" }],
      ["compact", { positions: "compact" }],
      ["compact, retaining heads", { positions: "compact", retainingHeads: heads }],
      ["original, low tier", { positions: "original", lowTier: "int2" }],
      ["compact, query energy (ThinK)", { positions: "compact", queryEnergy: true }],
    ];
    for (const [label, variant] of variants) {
      await t.step(label, async () => {
        const opts = graphOptionsFor({ ...DEFAULT_GRAPH_OPTIONS, kvDtype: "float16" as const, ...variant }, WEBGPU);
        const path = (await graphFor(ckpt, opts)).path;
        const placed = await placement(path, opts, JSON.stringify(ckpt.config));
        const { ops, shape } = await shapeNodes(path);
        const gpu = placed.get("WebGpuExecutionProvider") ?? [];
        assert.ok(gpu.length > ops.size / 2, `only ${gpu.length} of ${ops.size} nodes on WebGPU`);
        const cpu = placed.get("CPUExecutionProvider") ?? [];
        for (const name of cpu) {
          const op = ops.get(name);
          if (op === undefined) continue; // a node onnxruntime's optimizer made; checked by op type below
          assert.ok(shape.has(name), `${op} node ${name} falls back to the CPU`);
        }
        for (const name of cpu) {
          if (!ops.has(name)) assert.ok(SHAPE_OPS.has(name.split(/[ _/]/)[0]) || /Fusion|token/.test(name), name);
        }
        // the statistics tie, the masks and RoPE are on the GPU; the RoPE tables are inputs, no Cos/Sin is left
        const cpuOps = cpu.map((n) => ops.get(n) ?? n);
        for (const op of ["Sum", "Range", "Less", "Greater", "Where", "Slice"]) {
          assert.ok(!cpuOps.includes(op), `${op} on CPU`);
        }
        assert.ok(![...ops.values()].some((op) => op === "Cos" || op === "Sin"), "Cos/Sin in the graph");
        // onnxruntime 1.30's WebGPU provider has no If kernel: the graph for it has no switches
        assert.ok(![...ops.values()].some((op) => op === "If"), "an If node in the graph for WebGPU");
      });
    }
  },
});

const TOL = 2e-4;

Deno.test({
  name: "webgpu: graph = reference (logits, new K/V, statistics; carried cache; per-head lengths; f16 KV)",
  ignore,
  fn: async (t) => {
    const ckpt = await openCheckpoint(models!.get("qwen3")!);
    const c = ckpt.config;
    const w = await loadWeights(ckpt);
    const r = rng(5);
    const ids = Array.from({ length: 24 }, () => Math.floor(r() * c.vocab));
    const positions = ids.map((_, i) => i);
    const opts = graphOptionsFor({ ...DEFAULT_GRAPH_OPTIONS, logits: "all" as const }, WEBGPU);
    const session = await ModelSession.open(c, opts, (await graphFor(ckpt, opts)).path, { executionProviders: WEBGPU });
    const full = forward(c, w, ids, positions);
    const check = async (from: number, to: number, past: Past, windowStart: number) => {
      const part = ids.slice(from, to);
      const got = await session.run({
        ids: part,
        positions: positions.slice(from, to),
        past: past.length === 0 ? emptyPast(c, "float32") : {
          keys: past.layers.map((l) => l.keys),
          values: past.layers.map((l) => l.values),
          lengths: past.lengths?.flat() ?? new Array(c.layers * c.kvHeads).fill(past.length),
        },
        windowStart,
        fetch: { stats: [...STATS] },
      });
      const e = forward(c, w, part, positions.slice(from, to), past);
      assert.ok(maxAbsDiff(got.logits!, e.logits) < TOL, `logits differ by ${maxAbsDiff(got.logits!, e.logits)}`);
      for (let l = 0; l < c.layers; l++) {
        assert.ok(maxAbsDiff(got.newKeys[l], e.newKeys[l]) < TOL, `layer ${l} new keys`);
        assert.ok(maxAbsDiff(got.newValues[l], e.newValues[l]) < TOL, `layer ${l} new values`);
        const brute = bruteForceStats(
          e.probs[l],
          c.heads,
          c.kvHeads,
          part.length,
          past.length + part.length,
          windowStart,
        );
        for (const s of STATS) {
          const d = maxAbsDiff(got.stats[s]![l], brute[s]);
          assert.ok(d < TOL, `layer ${l} attn_${s} differs by ${d}`);
        }
      }
    };
    await t.step("one pass from an empty cache", () => check(0, 24, { length: 0, layers: [] }, 16));
    const head = forward(c, w, ids.slice(0, 16), positions.slice(0, 16));
    await t.step(
      "8 tokens over a carried cache of 16",
      () =>
        check(16, 24, { length: 16, layers: head.newKeys.map((k, l) => ({ keys: k, values: head.newValues[l] })) }, 3),
    );
    await t.step("per-head lengths, garbage in the empty slots", () => {
      const lengths = Array.from(
        { length: c.layers },
        (_, l) => Array.from({ length: c.kvHeads }, (_, h) => 16 - 3 * h - l),
      );
      const widen = (x: Float32Array, l: number) => {
        const y = Float32Array.from(x, (v, i) => {
          const slot = Math.floor(i / c.headDim) % 16, h = Math.floor(i / (16 * c.headDim));
          return slot < lengths[l][h] ? v : 50 * (r() - 0.5);
        });
        return y;
      };
      return check(16, 24, {
        length: 16,
        layers: head.newKeys.map((k, l) => ({ keys: widen(k, l), values: widen(head.newValues[l], l) })),
        lengths,
      }, 3);
    });
    await t.step("f16 KV, chunks of 8 carrying the graph's own cache: within 2e-2 relative of f32", async () => {
      const o16 = { ...opts, kvDtype: "float16" as const };
      const s16 = await ModelSession.open(c, o16, (await graphFor(ckpt, o16)).path, { executionProviders: WEBGPU });
      const { kvHeads: K, headDim: d, vocab: V } = c;
      let keys: Uint16Array[] = Array.from({ length: c.layers }, () => new Uint16Array(0));
      let values = keys.slice();
      const logits = new Float32Array(ids.length * V);
      const grow = (p: Uint16Array, P: number, f: Uint16Array) => {
        const y = new Uint16Array(K * (P + 8) * d);
        for (let h = 0; h < K; h++) {
          y.set(p.subarray(h * P * d, (h + 1) * P * d), h * (P + 8) * d);
          y.set(f.subarray(h * 8 * d, (h + 1) * 8 * d), (h * (P + 8) + P) * d);
        }
        return y;
      };
      for (let at = 0; at < ids.length; at += 8) {
        const got = await s16.run({
          ids: ids.slice(at, at + 8),
          positions: positions.slice(at, at + 8),
          past: { keys, values, lengths: new Array(c.layers * K).fill(at) },
        });
        logits.set(got.logits!, at * V);
        keys = keys.map((k, l) => grow(k, at, got.newKeys[l] as Uint16Array));
        values = values.map((v, l) => grow(v, at, got.newValues[l] as Uint16Array));
      }
      const rel = maxAbsDiff(logits, full.logits) / maxAbsDiff(full.logits, new Float32Array(full.logits.length));
      assert.ok(rel < 2e-2 && rel > 0, `relative difference ${rel}`);
      assert.ok(s16.kvFedPeakBytes === 2 * c.layers * K * 16 * d * 2, `fed ${s16.kvFedPeakBytes} bytes`);
      await s16.close();
    });
    await session.close();
  },
});

Deno.test({
  name: "webgpu: engine chunked prefill + decode gives the logits of one unchunked pass",
  ignore,
  fn: async (t) => {
    for (const positions of ["original", "compact"] as const) {
      await t.step(positions, async () => {
        const m = await loadModel(models!.get("llama")!, { positions, executionProviders: WEBGPU });
        const w = await loadWeights(m.checkpoint);
        const c = m.config;
        const doc = m.tokenizer.encode(mixedText(21, 160));
        const question = m.tokenizer.encode(" What is the pass code?");
        const state = await read({ ids: doc }, { model: m, policy: "full", budget: 4096, chunk: 16, question });
        const ids: number[] = [];
        const rows: Float32Array[] = [];
        for await (
          const _ of generate(state, {
            suffix: question,
            maxTokens: 4,
            eos: [],
            onToken: (id) => ids.push(id),
            onLogits: (row) => rows.push(row.slice()),
          })
        ) { /* drain */ }
        // the reference: the whole prompt in one pass, then one token at a time
        const prompt = [...doc, ...question];
        let out = forward(c, w, prompt, prompt.map((_, i) => i), undefined, positions);
        let past: Past = {
          length: prompt.length,
          layers: out.newKeys.map((k, l) => ({ keys: k, values: out.newValues[l] })),
          positions: prompt.map((_, i) => i),
        };
        const expected = [out.logits.slice((prompt.length - 1) * c.vocab)];
        for (const id of ids.slice(0, -1)) {
          out = forward(c, w, [id], [past.length], past, positions);
          const append = (x: Float32Array, y: Float32Array) =>
            appendEntries(x, past.length, y, 1, c.kvHeads, c.headDim);
          past = {
            length: past.length + 1,
            layers: past.layers.map((p, l) => ({
              keys: append(p.keys, out.newKeys[l]),
              values: append(p.values, out.newValues[l]),
            })),
            positions: Array.from({ length: past.length + 1 }, (_, i) => i),
          };
          expected.push(out.logits.slice());
        }
        assert.equal(rows.length, 4);
        for (let i = 0; i < rows.length; i++) {
          const d = maxAbsDiff(rows[i], expected[i]);
          assert.ok(d < TOL, `step ${i}: logits differ by ${d}`);
        }
        await m.session.close();
      });
    }
  },
});

Deno.test({
  name: "webgpu: tome ask on the retrieval model returns the planted code, naming the device and adapter",
  ignore,
  fn: async () => {
    await using d = await tempDir();
    const env = { TOME_CACHE: join(d.path, "cache") };
    const { model, corpus } = await makeRetrievalCli(d.path, env);
    const h = haystack(corpus, await loadTokenizer(model), 1000, 0.3, 77);
    const file = join(d.path, "haystack.txt");
    await Deno.writeTextFile(file, h.text);
    const r = await tome([
      "ask",
      h.needle.prefix,
      file,
      "--model",
      model,
      "--max-tokens",
      "6",
      "--json",
      "--quiet",
      "--device",
      "webgpu",
      "--policy",
      "snapkv",
      "--budget",
      "256",
      "--chunk",
      "256",
    ], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, "", "nothing native on stderr");
    const j = JSON.parse(r.stdout);
    const validate = new Ajv({ allErrors: true }).compile(schema);
    assert.ok(validate(JSON.parse(r.stdout)), JSON.stringify(validate.errors));
    assert.equal(scoreAnswer(j.answer, h.needle.code).exact, true, `answer ${JSON.stringify(j.answer)}`);
    assert.equal(j.device, "webgpu");
    assert.equal(typeof j.adapter.description, "string");
    assert.equal(typeof j.adapter.software, "boolean");
    // the fed cache is capacity-sized: more than nothing, never more than the whole input's K/V
    assert.ok(j.gpu_kv_bytes_per_run_peak > 0 && j.gpu_kv_bytes_per_run_peak <= j.kv_full_bytes);
  },
});

Deno.test("--device webgpu where Dawn finds no Vulkan driver: one tome: line, exit 12", async () => {
  await using d = await tempDir();
  const env = { TOME_CACHE: join(d.path, "cache"), VK_ICD_FILENAMES: "/nonexistent", VK_DRIVER_FILES: "/nonexistent" };
  const model = join(d.path, "tiny");
  const tokenizer = await writeTestTokenizer(join(d.path, "tokenizer"));
  const made = await tome(["make-model", "tiny", "--out", model, "--tokenizer", tokenizer], { env });
  assert.equal(made.code, 0, made.stderr);
  const file = join(d.path, "doc.txt");
  await Deno.writeTextFile(file, "A short document.");
  const r = await tome(["ask", "What?", file, "--model", model, "--device", "webgpu", "--quiet"], { env });
  assert.equal(r.code, 12, r.stderr);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^tome: .*webgpu/);
});

Deno.test({
  name: "cleanup webgpu test files",
  fn: () => Deno.remove(root, { recursive: true }),
  sanitizeResources: false,
});
