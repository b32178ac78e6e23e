/**
 * GGUF Q8_0/Q4_0 blocks taken into the graph unchanged (`fileBlocks`): the packed MatMulNBits and
 * GatherBlockQuantized initializers of the built graph, dequantized by a restatement of onnxruntime's layout
 * written here, equal the file's tensors as ggml dequantizes them (the reader's float32 path,
 * `kernels/quant_gguf.ts`) bit for bit; the graph's logits equal the reference forward over those dequantized
 * weights; a Q4_K or Q6_K tensor is re-quantized at the options' block; `auto` picks the file's type; the
 * cache never serves a re-quantized graph for a direct one.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import onnxProto from "onnx-proto";
import { toF16Bits } from "../kernels/fp16.ts";
import { dequantize, ggmlTypeNamed } from "../kernels/quant_gguf.ts";
import { dequantizeBlocks, quantizeBlocks } from "../kernels/quant.ts";
import { graphFor } from "../core/model/cache.ts";
import { type Checkpoint, openCheckpoint } from "../core/model/checkpoint.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions, resolveWeights } from "../core/model/onnx/decoder.ts";
import { forward, loadWeights } from "../core/model/reference.ts";
import { emptyPast, ModelSession } from "../core/model/session.ts";
import { makeRandomModel } from "../core/model/make.ts";
import { convertToGguf } from "../core/model/gguf/convert.ts";
import { readGgufHeader, readTensorBytes } from "../core/model/gguf/reader.ts";
import { writeGguf } from "../core/model/gguf/writer.ts";
import { rng } from "./helpers.ts";
import { makeTinyModels, maxAbsDiff, writeTestTokenizer } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-gguf-blocks-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"), "F32");
const IDS = [5, 17, 40, 99, 3, 200, 7, 8, 150, 42, 11, 300];
const TOL = 1e-4; // the weight-type tests' bound (tests/model_graph_test.ts)

const opts = (weights: "q8" | "q4", block = 128): GraphOptions => ({
  ...DEFAULT_GRAPH_OPTIONS,
  logits: "all",
  weights,
  quant: { block, symmetric: true, accuracyLevel: 0 },
  fileBlocks: true,
});

interface Packed {
  /** The Hugging Face tensor the blocks stand for. */
  tensor: string;
  op: string;
  bits: number;
  block: number;
  data: Uint8Array;
  scales: Float32Array;
  zeros: boolean;
}

/** Every block-quantized matrix of a built graph: its op, attributes and initializer bytes. */
async function packedMatrices(path: string): Promise<Packed[]> {
  const model = onnxProto.onnx.ModelProto.decode(await Deno.readFile(path));
  const g = model.graph!;
  const ext = await Deno.readFile(`${path}.data`).catch(() => new Uint8Array());
  const bytes = (name: string): Uint8Array => {
    const t = g.initializer!.find((i) => i.name === name);
    if (!t) throw new Error(`no initializer ${name}`);
    if (t.rawData && t.rawData.length) return t.rawData;
    const kv = Object.fromEntries(t.externalData!.map((e) => [e.key, e.value]));
    return ext.subarray(Number(kv.offset), Number(kv.offset) + Number(kv.length));
  };
  const attr = (n: onnxProto.onnx.INodeProto, a: string) => Number(n.attribute!.find((x) => x.name === a)!.i);
  const out: Packed[] = [];
  for (const n of g.node!) {
    if (n.opType !== "MatMulNBits" && n.opType !== "GatherBlockQuantized") continue;
    const [data, scales, zeros] = n.opType === "MatMulNBits" ? n.input!.slice(1) : [n.input![0], ...n.input!.slice(2)];
    const s = bytes(scales!).slice();
    out.push({
      // "layer0/model.layers.0.mlp.up_proj.weight.q8"; the tied head reads "model.embed_tokens.weight.head.q8"
      tensor: /\.head\.q[48]$/.test(data!) ? "lm_head.weight" : data!.replace(/^.*\//, "").replace(/\.q[48]$/, ""),
      op: n.opType!,
      bits: attr(n, "bits"),
      block: attr(n, "block_size"),
      data: bytes(data!),
      scales: new Float32Array(s.buffer),
      zeros: !!zeros,
    });
  }
  return out;
}

/** onnxruntime's symmetric blocks restated: value i of row r is (q − 2^(bits−1))·scale, 4-bit low nibble first. */
function unpack(p: Packed, rows: number, cols: number): Float32Array {
  const nb = Math.ceil(cols / p.block);
  const blob = (p.block * p.bits) / 8;
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const b = Math.floor(c / p.block), i = c % p.block;
      const at = (r * nb + b) * blob;
      const q = p.bits === 8 ? p.data[at + i] : (p.data[at + (i >> 1)] >> ((i & 1) * 4)) & 15;
      out[r * cols + c] = (q - (1 << (p.bits - 1))) * p.scales[r * nb + b];
    }
  }
  return out;
}

/** The file's tensor as ggml dequantizes it (the reader's float32 path), in Hugging Face layout. */
const fileValues = (ckpt: Checkpoint, name: string) =>
  name === "lm_head.weight" && ckpt.tiedEmbeddings
    ? ckpt.readTensor!("model.embed_tokens.weight")
    : ckpt.readTensor!(name);

function assertSame(got: Float32Array, want: Float32Array, what: string) {
  assert.equal(got.length, want.length, what);
  for (let i = 0; i < want.length; i++) {
    if (!Object.is(got[i], want[i]) && !(got[i] === 0 && want[i] === 0)) {
      assert.fail(`${what}: element ${i} is ${got[i]}, the file's is ${want[i]}`);
    }
  }
}

async function logitsOf(ckpt: Checkpoint, o: GraphOptions): Promise<Float32Array> {
  const s = await ModelSession.open(ckpt.config, o, (await graphFor(ckpt, o)).path);
  try {
    const r = await s.run({ ids: IDS, positions: IDS.map((_, i) => i), past: emptyPast(ckpt.config, "float32") });
    return r.logits!;
  } finally {
    await s.close();
  }
}

// llama permutes q/k rows in the file (whole rows: blocks move with them); qwen3 has q/k norms and keeps HF order
for (const name of ["llama", "qwen3"]) {
  for (const [file, weights] of [["q8_0", "q8"], ["q4_0", "q4"], ["q4_0", "q8"]] as const) {
    Deno.test(`gguf blocks: ${name} ${file} at ${weights}: the file's blocks unchanged, logits = reference`, async () => {
      const gguf = join(root, `${name}-${file}.gguf`);
      await Deno.stat(gguf).catch(() => convertToGguf(models.get(name)!, gguf, file));
      const ckpt = await openCheckpoint(gguf);
      const o = opts(weights);
      const packed = await packedMatrices((await graphFor(ckpt, o)).path);
      const c = ckpt.config;
      // every matrix of the file (all Q8_0/Q4_0 here), the embedding's lookup and the tied head included
      assert.equal(packed.length, 7 * c.layers + 2, packed.map((p) => p.tensor).join());
      for (const p of packed) {
        const [rows, cols] = ckpt.tensors.get(
          p.tensor === "lm_head.weight" && ckpt.tiedEmbeddings ? "model.embed_tokens.weight" : p.tensor,
        )!.shape;
        assert.equal(p.block, 32, `${p.tensor}: block`);
        assert.equal(p.bits, weights === "q8" ? 8 : 4, `${p.tensor}: bits`);
        assert.equal(p.zeros, false, `${p.tensor}: symmetric`);
        assertSame(unpack(p, rows, cols), await fileValues(ckpt, p.tensor), `${name} ${file} ${p.op} ${p.tensor}`);
      }
      // the reference forward over the file's dequantized weights (ggml's values)
      const want = forward(c, await loadWeights(ckpt), IDS, IDS.map((_, i) => i)).logits;
      const got = await logitsOf(ckpt, o);
      assert.ok(maxAbsDiff(got, want) <= TOL, `${name} ${file} ${weights}: max |Δlogit| ${maxAbsDiff(got, want)}`);
      // re-quantizing instead (blocks of 128 from the dequantized values) is a different model
      const requant = await logitsOf(ckpt, { ...o, fileBlocks: false });
      assert.ok(maxAbsDiff(requant, want) > TOL, `${name} ${file} ${weights}: re-quantized is as close`);
      if (name === "qwen3") {
        // int8 activations (accuracy level 4, the default) on the file's blocks: within the 3% of the logits'
        // range that tests/model_graph_test.ts allows for re-quantized blocks
        const acc4 = await logitsOf(ckpt, { ...o, quant: { ...o.quant!, accuracyLevel: 4 } });
        const rel = maxAbsDiff(acc4, want) / maxAbsDiff(want, new Float32Array(want.length));
        assert.ok(rel < 3e-2, `${file} ${weights} accuracy level 4: relative difference ${rel}`);
      }
    });
  }
}

/** Random valid Q4_K / Q6_K bytes: random quants and sub-scales, small f16 super-block scales. */
function randomKBlocks(type: "Q4_K" | "Q6_K", count: number, seed: number): Uint8Array {
  const r = rng(seed);
  const t = ggmlTypeNamed(type);
  const out = Uint8Array.from({ length: (count / t.blockSize) * t.typeSize }, () => Math.floor(r() * 256));
  const halves = type === "Q4_K" ? [0, 2] : [208];
  for (let b = 0; b < count / t.blockSize; b++) {
    for (const f of halves) {
      const h = toF16Bits((r() * 0.5 + 0.5) * (type === "Q4_K" ? 0.003 : 0.0005));
      out[b * t.typeSize + f] = h & 255;
      out[b * t.typeSize + f + 1] = h >> 8;
    }
  }
  return out;
}

Deno.test("gguf blocks: a mixed file (Q8_0 with Q4_K and Q6_K tensors): K-quants re-quantized, the rest unchanged", async () => {
  // K-quant super-blocks are 256 wide: a model whose matrices are 256 columns wide
  const dir = join(root, "wide");
  await makeRandomModel(dir, {
    arch: "qwen2",
    shape: { hidden: 256, layers: 1, heads: 4, kvHeads: 2, intermediate: 256 },
    seed: 3,
    dtype: "F32",
    tokenizer: await writeTestTokenizer(join(root, "wide-tokenizer")),
  });
  const q8 = join(root, "wide-q8_0.gguf");
  await convertToGguf(dir, q8, "q8_0");
  const h = await readGgufHeader(q8);
  const kTypes: Record<string, "Q4_K" | "Q6_K"> = { "blk.0.ffn_down.weight": "Q6_K", "blk.0.attn_q.weight": "Q4_K" };
  const mixed = join(root, "wide-mixed.gguf");
  await writeGguf(
    mixed,
    h.metadata,
    h.tensors.map((t, i) => ({
      name: t.name,
      dims: t.dims,
      type: kTypes[t.name] ?? t.type,
      data: () => kTypes[t.name] ? randomKBlocks(kTypes[t.name], t.dims[0] * t.dims[1], i) : readTensorBytes(h, t),
    })),
  );
  const ckpt = await openCheckpoint(mixed);
  assert.equal(resolveWeights(ckpt), "q8"); // most values are Q8_0
  const packed = await packedMatrices((await graphFor(ckpt, opts("q8"))).path);
  const requantized = ["model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight"];
  for (const p of packed) {
    const [rows, cols] =
      ckpt.tensors.get(p.tensor === "lm_head.weight" ? "model.embed_tokens.weight" : p.tensor)!.shape;
    const file = await fileValues(ckpt, p.tensor);
    if (requantized.includes(p.tensor)) {
      // ggml's dequantization of the K-quant, quantized to symmetric 8-bit blocks of 128
      assert.equal(p.block, 128, p.tensor);
      const want = dequantizeBlocks(quantizeBlocks(file, rows, cols, { bits: 8, block: 128, symmetric: true }));
      assertSame(unpack(p, rows, cols), want, `${p.tensor} re-quantized`);
      assert.ok(maxAbsDiff(unpack(p, rows, cols), file) > 0, `${p.tensor}: re-quantization changed nothing`);
    } else {
      assert.equal(p.block, 32, p.tensor);
      assertSame(unpack(p, rows, cols), file, `${p.tensor} unchanged`);
    }
  }
  // the K-quant tensors themselves are what ggml's dequantization says
  const t = h.tensors.find((t) => t.name === "blk.0.ffn_down.weight")!;
  const m = await readGgufHeader(mixed);
  const mt = m.tensors.find((x) => x.name === t.name)!;
  assert.equal(mt.type, "Q6_K");
  assertSame(
    await ckpt.readTensor!("model.layers.0.mlp.down_proj.weight"),
    dequantize("Q6_K", await readTensorBytes(m, mt), 256 * 256),
    "Q6_K read",
  );
});

Deno.test("gguf blocks: auto is the file's type; direct and re-quantized graphs have different cache keys", async () => {
  const gguf = join(root, "qwen3-q4_0.gguf");
  await Deno.stat(gguf).catch(() => convertToGguf(models.get("qwen3")!, gguf, "q4_0"));
  const ckpt = await openCheckpoint(gguf);
  assert.equal(resolveWeights(ckpt), "q4");
  assert.equal(resolveWeights(ckpt, "f32"), "f32");
  const f16 = join(root, "qwen3-f16.gguf");
  await convertToGguf(models.get("qwen3")!, f16, "f16");
  assert.equal(resolveWeights(await openCheckpoint(f16)), "f16");
  const direct = await graphFor(ckpt, opts("q4", 32));
  const requant = await graphFor(ckpt, { ...opts("q4", 32), fileBlocks: false });
  assert.notEqual(direct.dir, requant.dir);
  assert.equal(requant.built, true);
});

Deno.test({
  name: "cleanup gguf blocks test files",
  fn: () => Deno.remove(root, { recursive: true }),
  sanitizeResources: false,
});
