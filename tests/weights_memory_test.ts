/**
 * What keeps the weights' memory down: the tied q8/q4 LM head reads the
 * embedding's blocks through an alias (the same external bytes, one copy on
 * disk, but an initializer onnxruntime maps on its own), and the graph build's
 * garbage is collected before a session loads. That the aliased head computes
 * the right logits is tests/model_graph_test.ts's "weight types" test (tied
 * llama, qwen2, qwen3 against the reference on dequantized weights).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import onnxProto from "onnx-proto";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { collectGarbage } from "../core/model/gc.ts";
import { buildGraph } from "../core/model/graph_build.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { DEFAULT_GRAPH_OPTIONS, DEFAULT_QUANT } from "../core/model/onnx/decoder.ts";
import { Graph } from "../core/model/onnx/graph.ts";
import { tempDir } from "./helpers.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";

const { onnx } = onnxProto;

/** location/offset/length of an external initializer. */
const span = (t: onnxProto.onnx.ITensorProto) =>
  Object.fromEntries((t.externalData ?? []).map((e) => [e.key!, e.value!]));

for (const weights of ["q8", "q4"] as const) {
  Deno.test(`tied ${weights} graph: the LM head aliases the embedding's blocks, stored once`, async () => {
    await using tmp = await tempDir();
    const tokenizer = await writeTestTokenizer(join(tmp.path, "tokenizer"));
    const dir = join(tmp.path, "model");
    await makeRandomModel(dir, { arch: "llama", shape: SIZES.tiny, seed: 3, dtype: "F32", tokenizer });
    const ckpt = await openCheckpoint(dir);
    assert.ok(ckpt.tiedEmbeddings);
    await buildGraph(ckpt, { ...DEFAULT_GRAPH_OPTIONS, weights, quant: DEFAULT_QUANT }, tmp.path);
    const model = onnx.ModelProto.decode(await Deno.readFile(join(tmp.path, "model.onnx")));
    const inits = new Map(model.graph!.initializer!.map((t) => [t.name!, t]));
    const nodes = model.graph!.node!;
    const gather = nodes.find((n) => n.opType === "GatherBlockQuantized")!;
    const heads = nodes.filter((n) =>
      n.opType === "MatMulNBits" && n.attribute!.some((a) => a.name === "N" && Number(a.i) === ckpt.config.vocab)
    );
    assert.equal(heads.length, 1, "one MatMulNBits with N = vocab: the LM head");
    const table = inits.get(gather.input![0])!;
    const head = inits.get(heads[0].input![1])!;
    // two initializers (mapped separately by onnxruntime) …
    assert.notEqual(head.name, table.name);
    // … over the same bytes of the external file
    assert.deepEqual(span(head), span(table));
    assert.deepEqual([...head.dims!].map(Number), [...table.dims!].map(Number));
    assert.equal(head.dataType, table.dataType);
    // and no other initializer covers those bytes: the file holds the table once
    const { offset, length } = span(table);
    const overlapping = model.graph!.initializer!.filter((t) => {
      const s = span(t);
      return s.offset !== undefined && Number(s.offset) < Number(offset) + Number(length) &&
        Number(s.offset) + Number(s.length) > Number(offset);
    });
    assert.deepEqual(overlapping.map((t) => t.name).sort(), [head.name, table.name].sort());
  });
}

Deno.test("Graph.alias: a second name over the same initializer bytes, inline or external", async () => {
  await using tmp = await tempDir();
  const file = await Deno.open(join(tmp.path, "data"), { write: true, create: true });
  try {
    const g = new Graph({ file, location: "data", threshold: 64 });
    g.weight("first", "float32", [64], new Float32Array(64)); // so the aliased span starts past 0
    const big = g.weight("big", "float32", [32], new Float32Array(32).fill(1.5));
    const small = g.weight("small", "float32", [2], Float32Array.of(1, 2));
    const a = g.alias("big.again", big);
    const b = g.alias("small.again", small);
    const byName = new Map(g.initializers.map((t) => [t.name, t]));
    assert.deepEqual(span(byName.get(a)!), span(byName.get(big)!));
    assert.deepEqual(span(byName.get(a)!), { location: "data", offset: "4096", length: "128" });
    assert.deepEqual([...byName.get(b)!.rawData!], [...byName.get(small)!.rawData!]);
    assert.throws(() => g.alias("x", "missing"), /no initializer missing/);
  } finally {
    file.close();
  }
});

Deno.test("collectGarbage frees unreachable buffers at once", () => {
  let held: Uint8Array[] = Array.from({ length: 20 }, (_, i) => new Uint8Array(5e6).fill(i + 1));
  const before = Deno.memoryUsage().external;
  assert.ok(before >= 100e6);
  const survivor = held[3];
  held = []; // 95 MB unreachable: V8 would collect it at some later allocation
  assert.ok(collectGarbage(), "gc available");
  const after = Deno.memoryUsage().external;
  assert.ok(before - after >= 90e6, `external ${before} → ${after}`);
  assert.ok(after >= 5e6 && survivor[0] === 4, "a reachable buffer stays");
});
