import assert from "node:assert/strict";
import { join } from "node:path";
import { f32ToF16 } from "../kernels/fp16.ts";
import { normals, uniform } from "../kernels/random.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { kvBytesPerToken, parseConfig } from "../core/model/config.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { loadWeights } from "../core/model/reference.ts";
import { inverseFrequencies } from "../core/model/rope.ts";
import { readHeader, readTensor, writeSafetensors } from "../core/model/safetensors.ts";
import { TomeError } from "../core/errors.ts";
import { tempDir } from "./helpers.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";

async function rejectsKind(p: Promise<unknown>, kind: string, pattern: RegExp) {
  await assert.rejects(p, (e: unknown) => e instanceof TomeError && e.kind === kind && pattern.test(e.message));
}

/** A safetensors file written byte by byte, independent of the writer under test. */
async function writeRaw(path: string, tensors: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[]) {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.bytes.length] };
    off += t.bytes.length;
  }
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  let at = 8 + json.length;
  for (const t of tensors) out.set(t.bytes, (at += t.bytes.length) - t.bytes.length);
  await Deno.writeFile(path, out);
}

Deno.test("safetensors: F32, BF16 and F16 tensors read back as float32", async () => {
  await using d = await tempDir();
  const data = normals(uniform(1), 600);
  await writeSafetensors(join(d.path, "f32.safetensors"), [{ name: "a", shape: [20, 30], data }], "F32");
  await writeSafetensors(join(d.path, "bf16.safetensors"), [{ name: "a", shape: [20, 30], data: () => data }], "BF16");
  const half = f32ToF16(data);
  await writeRaw(join(d.path, "f16.safetensors"), [{
    name: "a",
    dtype: "F16",
    shape: [600],
    bytes: new Uint8Array(half.buffer),
  }]);
  const read = async (f: string) => readTensor((await readHeader(join(d.path, f))).get("a")!);
  assert.deepEqual(await read("f32.safetensors"), data);
  const bf = await read("bf16.safetensors");
  const f16 = await read("f16.safetensors");
  for (let i = 0; i < data.length; i++) {
    assert.ok(Math.abs(bf[i] - data[i]) <= Math.abs(data[i]) * 2 ** -8, "bf16 within half an ulp");
    assert.ok(Math.abs(f16[i] - data[i]) <= Math.abs(data[i]) * 2 ** -11 + 2 ** -25, "f16 within half an ulp");
  }
});

Deno.test("safetensors: corrupt files fail clearly", async () => {
  await using d = await tempDir();
  const p = join(d.path, "x.safetensors");
  await Deno.writeFile(p, Uint8Array.of(1, 2, 3));
  await rejectsKind(readHeader(p), "modelInvalid", /truncated/);
  await writeRaw(p, [{ name: "a", dtype: "I8", shape: [4], bytes: new Uint8Array(4) }]);
  await rejectsKind(readHeader(p), "modelInvalid", /dtype I8/);
  await writeRaw(p, [{ name: "a", dtype: "F32", shape: [5], bytes: new Uint8Array(16) }]);
  await rejectsKind(readHeader(p), "modelInvalid", /does not match its shape/);
  const bad = new Uint8Array(16);
  new DataView(bad.buffer).setBigUint64(0, 1n << 40n, true);
  await Deno.writeFile(p, bad);
  await rejectsKind(readHeader(p), "modelInvalid", /bad header length/);
});

Deno.test("checkpoint: made models open through the loader; sharded checkpoints load the same weights", async () => {
  await using d = await tempDir();
  const tok = await writeTestTokenizer(join(d.path, "tok"));
  const dir = join(d.path, "m");
  await makeRandomModel(dir, { arch: "qwen2", shape: SIZES.tiny, seed: 3, dtype: "BF16", tokenizer: tok });
  const whole = await openCheckpoint(dir);
  assert.equal(whole.config.arch, "qwen2");
  assert.equal(whole.config.qkvBias, true);
  assert.equal(whole.tensors.get("model.layers.0.self_attn.q_proj.bias")?.dtype, "BF16");
  const weights = await loadWeights(whole);

  // split into two shards with an index, as Hugging Face does for large models
  const sharded = join(d.path, "sharded");
  await Deno.mkdir(sharded);
  for (const f of ["config.json", "tokenizer.json"]) await Deno.copyFile(join(dir, f), join(sharded, f));
  const names = [...whole.tensors.keys()].sort();
  const map: Record<string, string> = {};
  for (const [i, part] of [names.slice(0, 9), names.slice(9)].entries()) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    const tensors = [];
    for (const n of part) {
      tensors.push({ name: n, shape: whole.tensors.get(n)!.shape, data: await readTensor(whole.tensors.get(n)!) });
      map[n] = file;
    }
    await writeSafetensors(join(sharded, file), tensors, "F32");
  }
  await Deno.writeTextFile(
    join(sharded, "model.safetensors.index.json"),
    JSON.stringify({ metadata: {}, weight_map: map }),
  );
  const shardedCkpt = await openCheckpoint(sharded);
  assert.equal(shardedCkpt.files.length, 2);
  const w2 = await loadWeights(shardedCkpt);
  assert.deepEqual(w2.layers[1].wq, weights.layers[1].wq);
  assert.deepEqual(w2.embed, weights.embed);
});

Deno.test("checkpoint: missing tensors, wrong shapes, unsupported architectures fail with one clear message", async () => {
  await using d = await tempDir();
  const tok = await writeTestTokenizer(join(d.path, "tok"));
  const dir = join(d.path, "m");
  await makeRandomModel(dir, { arch: "llama", shape: SIZES.tiny, seed: 3, dtype: "F32", tokenizer: tok });
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  const withConfig = (patch: Record<string, unknown>) =>
    Deno.writeTextFile(join(dir, "config.json"), JSON.stringify({ ...config, ...patch }));

  await withConfig({ num_hidden_layers: 3 });
  await rejectsKind(openCheckpoint(dir), "modelInvalid", /missing tensor model\.layers\.2\./);
  await withConfig({ intermediate_size: 100 });
  await rejectsKind(
    openCheckpoint(dir),
    "modelInvalid",
    /mlp\.gate_proj\.weight has shape \[128,64\], config\.json implies \[100,64\]/,
  );
  await withConfig({ model_type: "gpt2" });
  await rejectsKind(openCheckpoint(dir), "modelInvalid", /unsupported model_type "gpt2"/);
  await withConfig({ hidden_act: "gelu" });
  await rejectsKind(openCheckpoint(dir), "modelInvalid", /hidden_act "gelu"/);
  await withConfig({ rope_scaling: { rope_type: "yarn", factor: 4 } });
  await rejectsKind(openCheckpoint(dir), "modelInvalid", /rope_scaling/);
  await withConfig({});
  await Deno.remove(join(dir, "model.safetensors"));
  await Deno.writeFile(join(dir, "pytorch_model.bin"), new Uint8Array(1));
  await rejectsKind(openCheckpoint(dir), "modelInvalid", /pytorch_model\.bin is not supported/);
  await rejectsKind(openCheckpoint(join(d.path, "nope")), "notFound", /not found/);
  await rejectsKind(openCheckpoint(tok), "modelInvalid", /no config\.json/);
});

Deno.test("config: llama3 RoPE scaling keeps high frequencies, divides low ones by the factor, blends between", () => {
  const base = { headDim: 64, ropeTheta: 500000, ropeScaling: null };
  const plain = inverseFrequencies(base);
  const scaled = inverseFrequencies({
    ...base,
    ropeScaling: { type: "llama3", factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
  });
  const wavelen = (f: number) => (2 * Math.PI) / f;
  let blended = 0;
  for (let i = 0; i < plain.length; i++) {
    if (wavelen(plain[i]) < 8192 / 4) assert.equal(scaled[i], plain[i]);
    else if (wavelen(plain[i]) > 8192) assert.ok(Math.abs(scaled[i] - plain[i] / 8) < 1e-12);
    else {
      blended++;
      assert.ok(scaled[i] < plain[i] && scaled[i] > plain[i] / 8);
    }
  }
  assert.ok(blended > 0);
  const linear = inverseFrequencies({ ...base, ropeScaling: { type: "linear", factor: 2 } });
  assert.ok(Math.abs(linear[5] - plain[5] / 2) < 1e-12);
});

Deno.test("config: defaults, GQA validation, KV bytes per token", () => {
  const c = parseConfig({
    model_type: "mistral",
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 32768,
    sliding_window: 4096,
  });
  assert.equal(c.headDim, 128);
  assert.equal(c.tieEmbeddings, false);
  assert.equal(c.slidingWindow, 4096);
  assert.equal(kvBytesPerToken(c, 2), 2 * 32 * 8 * 128 * 2); // 128 KiB per token in f16
  assert.throws(
    () => parseConfig({ ...c, model_type: "llama", hidden_size: 64, num_attention_heads: 6, num_key_value_heads: 4 }),
    /do not divide/,
  );
});
