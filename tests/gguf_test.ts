/**
 * GGUF in and out: dequantization of every block type against a per-element
 * restatement written here from ggml's block definitions; headers as untrusted
 * input; Q/K permutation against numpy's reshape/swapaxes restated; the round
 * trip safetensors → GGUF → tome against the safetensors path (reference
 * forward and the real graph); tokenizers from metadata against the original
 * tokenizer.json; the Ollama store; the CLI.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { fromF16Bits, toBf16Bits, toF16Bits } from "../kernels/fp16.ts";
import { dequantize, ggmlTypeNamed, quantizeQ4_0, quantizeQ8_0 } from "../kernels/quant_gguf.ts";
import { TomeError } from "../core/errors.ts";
import { graphFor } from "../core/model/cache.ts";
import { loadTensor, openCheckpoint } from "../core/model/checkpoint.ts";
import { DEFAULT_GRAPH_OPTIONS } from "../core/model/onnx/decoder.ts";
import { forward, loadWeights } from "../core/model/reference.ts";
import { inverseFrequencies } from "../core/model/rope.ts";
import { emptyPast, ModelSession } from "../core/model/session.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { convertToGguf } from "../core/model/gguf/convert.ts";
import { GGUF_MAGIC, type GgufHeader, type GgufKv, VT } from "../core/model/gguf/format.ts";
import { tokenizerFromGguf, tokenizerMetadata } from "../core/model/gguf/tokenizer.ts";
import { permuteRows } from "../core/model/gguf/names.ts";
import { resolveOllama } from "../core/model/gguf/ollama.ts";
import { readGgufHeader, readTensorF32 } from "../core/model/gguf/reader.ts";
import { writeGguf } from "../core/model/gguf/writer.ts";
import { loadTokenizer, tokenizerFromJson } from "../core/tokens/tokenizer.ts";
import { CORPUS, hasShared, rng, SMOLLM2_TOKENIZER, tempDir, tome } from "./helpers.ts";
import { makeTinyModels, maxAbsDiff, TINY_MODELS } from "./model_fixtures.ts";
import { sentencepieceStyleTokenizer } from "./fixture_text.ts";

const root = await Deno.makeTempDir({ prefix: "tome-gguf-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"), "F32");

async function rejectsInvalid(p: Promise<unknown>, pattern: RegExp, kind = "modelInvalid") {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof TomeError, `expected a TomeError, got ${e}`);
    assert.equal(e.kind, kind, e.message);
    assert.match(e.message, pattern);
    return true;
  });
}

// ---------------------------------------------------------------------------
// dequantization: one value at a time, straight from the block layouts

const f16At = (b: Uint8Array, at: number) => fromF16Bits(b[at] | (b[at + 1] << 8));
const i8 = (x: number) => (x > 127 ? x - 256 : x);

/** Element j (0 ≤ j < block size) of one block, restated from ggml-common.h's structs. */
function refElement(type: string, b: Uint8Array, j: number): number {
  switch (type) {
    case "Q8_0": // { half d; int8 qs[32] }
      return f16At(b, 0) * i8(b[2 + j]);
    case "Q4_0": { // { half d; uint8 qs[16] }: element j in byte j%16, low nibble for j<16
      const nib = j < 16 ? b[2 + j] & 15 : b[2 + j - 16] >> 4;
      return (nib - 8) * f16At(b, 0);
    }
    case "Q4_1": { // { half d, m; uint8 qs[16] }
      const nib = j < 16 ? b[4 + j] & 15 : b[4 + j - 16] >> 4;
      return nib * f16At(b, 0) + f16At(b, 2);
    }
    case "Q5_0": { // { half d; uint32 qh; uint8 qs[16] }: the fifth bit of element j is bit j of qh
      const qh = b[2] | (b[3] << 8) | (b[4] << 16) | (b[5] << 24);
      const nib = j < 16 ? b[6 + j] & 15 : b[6 + j - 16] >> 4;
      return ((nib | (((qh >>> j) & 1) << 4)) - 16) * f16At(b, 0);
    }
    case "Q5_1": { // { half d, m; uint32 qh; uint8 qs[16] }
      const qh = b[4] | (b[5] << 8) | (b[6] << 16) | (b[7] << 24);
      const nib = j < 16 ? b[8 + j] & 15 : b[8 + j - 16] >> 4;
      return (nib | (((qh >>> j) & 1) << 4)) * f16At(b, 0) + f16At(b, 2);
    }
    case "Q4_K":
    case "Q5_K": { // { half d, dmin; uint8 scales[12]; [uint8 qh[32];] uint8 qs[128] }
      const sub = Math.floor(j / 32); // 8 sub-blocks of 32
      const l = j % 32;
      const s = (k: number) => b[4 + k];
      const sc = sub < 4 ? s(sub) & 63 : (s(sub + 4) & 15) | ((s(sub - 4) >> 6) << 4);
      const mn = sub < 4 ? s(sub + 4) & 63 : (s(sub + 4) >> 4) | ((s(sub) >> 6) << 4);
      const qs = type === "Q4_K" ? 16 : 48;
      const byte = b[qs + 32 * Math.floor(sub / 2) + l];
      let q = sub % 2 === 0 ? byte & 15 : byte >> 4;
      if (type === "Q5_K") q += ((b[16 + l] >> sub) & 1) * 16;
      return f16At(b, 0) * sc * q - f16At(b, 2) * mn;
    }
    case "Q6_K": { // { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d }
      const half = Math.floor(j / 128);
      const quarter = Math.floor((j % 128) / 32);
      const l = j % 32;
      const lo = b[64 * half + l + (quarter & 1 ? 32 : 0)];
      const nib = quarter < 2 ? lo & 15 : lo >> 4;
      const hi = (b[128 + 32 * half + l] >> (2 * quarter)) & 3;
      const sc = i8(b[192 + 8 * half + Math.floor(l / 16) + 2 * quarter]);
      return f16At(b, 208) * sc * ((nib | (hi << 4)) - 32);
    }
    case "F16":
      return f16At(b, 2 * j);
    case "BF16":
      return new Float32Array(new Uint32Array([(b[2 * j] | (b[2 * j + 1] << 8)) << 16]).buffer)[0];
    case "F32":
      return new Float32Array(b.slice(4 * j, 4 * j + 4).buffer)[0];
  }
  throw new Error(type);
}

/** Offsets of the f16 scale fields of a block (random bytes there could be NaN or huge). */
const HALF_FIELDS: Record<string, number[]> = {
  Q8_0: [0],
  Q4_0: [0],
  Q4_1: [0, 2],
  Q5_0: [0],
  Q5_1: [0, 2],
  Q4_K: [0, 2],
  Q5_K: [0, 2],
  Q6_K: [208],
};
const QUANT_TYPES = Object.keys(HALF_FIELDS);
const ALL_TYPES = [...QUANT_TYPES, "F16", "BF16", "F32"];

/** Random valid bytes for `count` values of a type. */
function randomBlocks(type: string, count: number, seed: number): Uint8Array {
  const r = rng(seed);
  const t = ggmlTypeNamed(type);
  const out = new Uint8Array((count / t.blockSize) * t.typeSize);
  if (type === "F32") return new Uint8Array(Float32Array.from({ length: count }, () => r() * 4 - 2).buffer);
  for (let i = 0; i < out.length; i++) out[i] = Math.floor(r() * 256);
  const put16 = (at: number, bits: number) => {
    out[at] = bits & 255;
    out[at + 1] = bits >> 8;
  };
  if (type === "F16" || type === "BF16") {
    for (let i = 0; i < count; i++) put16(2 * i, (type === "F16" ? toF16Bits : toBf16Bits)(r() * 8 - 4));
    return out;
  }
  for (let b = 0; b < count / t.blockSize; b++) {
    for (const f of HALF_FIELDS[type]) put16(b * t.typeSize + f, toF16Bits((r() - 0.5) * 0.1));
  }
  return out;
}

function refDequantize(type: string, bytes: Uint8Array, count: number): Float32Array {
  const t = ggmlTypeNamed(type);
  const out = new Float32Array(count);
  for (let i = 0; i < count; i++) {
    const blk = Math.floor(i / t.blockSize);
    out[i] = refElement(type, bytes.subarray(blk * t.typeSize, (blk + 1) * t.typeSize), i % t.blockSize);
  }
  return out;
}

function assertClose(got: Float32Array, want: Float32Array, what: string) {
  assert.equal(got.length, want.length);
  for (let i = 0; i < want.length; i++) {
    const tol = 1e-6 * Math.max(1, Math.abs(want[i]));
    if (!(Math.abs(got[i] - want[i]) <= tol)) assert.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]}`);
  }
}

Deno.test("gguf: every tensor type dequantizes as its block definition says", () => {
  for (const type of ALL_TYPES) {
    const count = 512;
    const bytes = randomBlocks(type, count, type.length * 7 + type.charCodeAt(1));
    assertClose(dequantize(type, bytes, count), refDequantize(type, bytes, count), type);
  }
});

Deno.test("gguf: Q8_0 and Q4_0 quantization stays within half a step of each block's scale", () => {
  const r = rng(3);
  const x = Float32Array.from({ length: 32 * 64 }, () => (r() - 0.5) * (r() < 0.1 ? 20 : 2));
  for (const [type, quantize, steps] of [["Q8_0", quantizeQ8_0, 127], ["Q4_0", quantizeQ4_0, 8]] as const) {
    const q = quantize(x);
    const y = dequantize(type, q, x.length);
    assertClose(y, refDequantize(type, q, x.length), `${type} written bytes`);
    for (let b = 0; b < x.length / 32; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]));
      const step = amax / steps;
      for (let j = 0; j < 32; j++) {
        const v = x[b * 32 + j];
        const err = Math.abs(y[b * 32 + j] - v);
        // half a step, plus the f16 rounding of the scale carried over up to `steps` multiples; Q4_0 spans
        // −8..7 steps from the largest magnitude's side, so the far side's last half step can cost a whole one
        const clamped = type === "Q4_0" && Math.abs(v) > 7.5 * step;
        const bound = (clamped ? step : step / 2) + amax * 2 ** -10;
        assert.ok(err <= bound, `${type} block ${b}: error ${err} > ${bound}`);
      }
    }
  }
});

// ---------------------------------------------------------------------------
// files: metadata of every value type, tensors of every type, v2 and v3

const ALL_KV: [string, GgufKv][] = [
  ["t.u8", { type: VT.UINT8, value: 250 }],
  ["t.i8", { type: VT.INT8, value: -100 }],
  ["t.u16", { type: VT.UINT16, value: 65000 }],
  ["t.i16", { type: VT.INT16, value: -32000 }],
  ["t.u32", { type: VT.UINT32, value: 4000000000 }],
  ["t.i32", { type: VT.INT32, value: -2000000000 }],
  ["t.f32", { type: VT.FLOAT32, value: 0.25 }],
  ["t.bool", { type: VT.BOOL, value: true }],
  ["t.str", { type: VT.STRING, value: "héllo ▁ wörld" }],
  ["t.u64", { type: VT.UINT64, value: 2 ** 40 + 3 }],
  ["t.i64", { type: VT.INT64, value: -(2 ** 40) }],
  ["t.f64", { type: VT.FLOAT64, value: 1 / 3 }],
  ["t.arr.str", { type: VT.ARRAY, itemType: VT.STRING, value: ["a", "", "ü b"] }],
  ["t.arr.i32", { type: VT.ARRAY, itemType: VT.INT32, value: [1, -2, 3] }],
  ["t.arr.f32", { type: VT.ARRAY, itemType: VT.FLOAT32, value: [0.5, -1.5] }],
  ["t.arr.bool", { type: VT.ARRAY, itemType: VT.BOOL, value: [true, false] }],
  ["t.arr.empty", { type: VT.ARRAY, itemType: VT.UINT8, value: [] }],
];

Deno.test("gguf: metadata of every value type and tensors of every type read back (v3 and v2)", async () => {
  await using d = await tempDir();
  const tensors = ALL_TYPES.map((type, i) => ({
    name: `t.${type}`,
    dims: [256, 2],
    type,
    bytes: randomBlocks(type, 512, 100 + i),
  }));
  const path = join(d.path, "all.gguf");
  await writeGguf(path, new Map(ALL_KV), tensors.map((t) => ({ ...t, data: () => t.bytes })));
  const h = await readGgufHeader(path);
  assert.equal(h.version, 3);
  for (const [k, v] of ALL_KV) assert.deepEqual(h.metadata.get(k), v, k);
  for (const t of tensors) {
    const info = h.tensors.find((x) => x.name === t.name)!;
    assert.deepEqual([info.type, info.dims, info.offset % 32], [t.type, t.dims, 0]);
    assertClose(await readTensorF32(h, info), refDequantize(t.type, t.bytes, 512), `file ${t.type}`);
  }
  // v2 has the same layout for these fields
  const bytes = await Deno.readFile(path);
  bytes[4] = 2;
  await Deno.writeFile(join(d.path, "v2.gguf"), bytes);
  const h2 = await readGgufHeader(join(d.path, "v2.gguf"));
  assert.equal(h2.version, 2);
  assert.equal(h2.tensors.length, tensors.length);
});

/** A GGUF header written field by field, independent of the writer, for malformed files. */
class Raw {
  parts: number[] = [];
  u32(v: number) {
    for (let i = 0; i < 4; i++) this.parts.push((v >>> (8 * i)) & 255);
    return this;
  }
  u64(v: bigint | number) {
    const b = BigInt(v);
    for (let i = 0n; i < 8n; i++) this.parts.push(Number((b >> (8n * i)) & 255n));
    return this;
  }
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.length);
    this.parts.push(...b);
    return this;
  }
  head(tensors: bigint | number, kvs: bigint | number, version = 3) {
    return this.u32(GGUF_MAGIC).u32(version).u64(tensors).u64(kvs);
  }
  tensor(name: string, dims: (number | bigint)[], type: number, offset: number | bigint) {
    this.str(name).u32(dims.length);
    for (const x of dims) this.u64(x);
    return this.u32(type).u64(offset);
  }
  bytes(pad = 4096) {
    return new Uint8Array([...this.parts, ...new Array(pad).fill(0)]);
  }
}

Deno.test("gguf: malformed headers fail as modelInvalid with a clear message, before any large allocation", async () => {
  await using d = await tempDir();
  const cases: [string, Uint8Array, RegExp][] = [
    ["magic", new Raw().u32(0x12345678).u32(3).u64(0).u64(0).bytes(), /not a GGUF file/],
    ["version 1", new Raw().head(0, 0, 1).bytes(), /version 1/],
    ["version 9", new Raw().head(0, 0, 9).bytes(), /version 9/],
    ["tensor count", new Raw().head(1n << 62n, 0).bytes(), /larger than any file/],
    ["tensor count 2", new Raw().head(1n << 40n, 0).bytes(), /claims/],
    ["kv count", new Raw().head(0, 1n << 40n).bytes(), /claims/],
    ["64-bit count", new Raw().head(0, 1n << 60n).bytes(), /larger than any file|claims/],
    ["key length", new Raw().head(0, 1).u64(1n << 50n).bytes(), /past the end/],
    ["array count", new Raw().head(0, 1).str("a").u32(VT.ARRAY).u32(VT.UINT32).u64(1n << 40n).bytes(), /claims/],
    [
      "strings run out",
      new Raw().head(0, 1).str("a").u32(VT.ARRAY).u32(VT.STRING).u64(400).bytes(100),
      /past the end|claims/,
    ],
    ["value type", new Raw().head(0, 1).str("a").u32(99).bytes(), /unknown value type 99/],
    [
      "bool",
      new Uint8Array([...new Raw().head(0, 1).str("a").u32(VT.BOOL).parts, 7, ...new Array(64).fill(0)]),
      /bool has the value 7/,
    ],
    [
      "nesting",
      (() => {
        const r = new Raw().head(0, 1).str("deep").u32(VT.ARRAY);
        for (let i = 0; i < 6; i++) r.u32(VT.ARRAY).u64(1);
        return r.bytes();
      })(),
      /nests arrays/,
    ],
    [
      "duplicate key",
      new Raw().head(0, 2).str("a").u32(VT.UINT32).u32(1).str("a").u32(VT.UINT32).u32(2).bytes(),
      /appears twice/,
    ],
    ["dims", new Raw().head(1, 0).tensor("w", [1, 1, 1, 1, 1], 0, 0).bytes(), /5 dimensions/],
    ["zero dim", new Raw().head(1, 0).tensor("w", [32, 0], 0, 0).bytes(), /zero dimension/],
    ["huge dims", new Raw().head(1, 0).tensor("w", [1n << 40n, 1n << 40n], 0, 0).bytes(), /more elements/],
    ["type", new Raw().head(1, 0).tensor("w", [32], 200, 0).bytes(), /unknown type 200/],
    ["block", new Raw().head(1, 0).tensor("w", [33], 8, 0).bytes(), /multiple of the Q8_0 block/],
    ["past end", new Raw().head(1, 0).tensor("w", [64, 64], 0, 0).bytes(), /past the end of the file/],
    ["misaligned", new Raw().head(1, 0).tensor("w", [4], 0, 8).bytes(), /not aligned/],
    [
      "overlap",
      new Raw().head(2, 0).tensor("a", [64], 0, 0).tensor("b", [64], 0, 128).bytes(),
      /overlap/,
    ],
    ["duplicate tensor", new Raw().head(2, 0).tensor("a", [8], 0, 0).tensor("a", [8], 0, 32).bytes(), /twice/],
    [
      "alignment",
      new Raw().head(0, 1).str("general.alignment").u32(VT.UINT32).u32(3).bytes(),
      /power of two/,
    ],
  ];
  for (const [name, bytes, pattern] of cases) {
    const path = join(d.path, `${name.replaceAll(" ", "_")}.gguf`);
    await Deno.writeFile(path, bytes);
    const t0 = performance.now();
    await rejectsInvalid(readGgufHeader(path), pattern).catch((e) => {
      throw new Error(`case ${name}: ${e.message}`);
    });
    assert.ok(performance.now() - t0 < 1000, `case ${name} took ${performance.now() - t0} ms`);
  }
});

Deno.test("gguf: truncated and bit-flipped files either read or fail as modelInvalid", async () => {
  await using d = await tempDir();
  const path = join(d.path, "ok.gguf");
  await convertToGguf(models.get("qwen3")!, path, "q8_0");
  const good = await Deno.readFile(path);
  const r = rng(11);
  const headerEnd = (await readGgufHeader(path)).dataStart;
  for (let i = 0; i < 60; i++) {
    const bytes = i < 20 ? good.slice(0, Math.floor(r() * good.length)) : good.slice();
    if (i >= 20) {
      for (let k = 0; k < 1 + (i % 4); k++) bytes[Math.floor(r() * headerEnd)] ^= 1 << Math.floor(r() * 8);
    }
    const p = join(d.path, `case${i}.gguf`);
    await Deno.writeFile(p, bytes);
    try {
      await openCheckpoint(p);
    } catch (e) {
      assert.ok(e instanceof TomeError, `case ${i}: ${e}`);
      assert.ok(["modelInvalid", "tokenizerInvalid"].includes(e.kind), `case ${i}: ${e.kind} ${e.message}`);
    }
  }
});

// ---------------------------------------------------------------------------
// Q/K layout

Deno.test("gguf: Q/K rows permute as llama.cpp's reshape(heads, 2, d/2, in).swapaxes(1, 2), and back", () => {
  const heads = 3, d = 8, cols = 5;
  const w = Float32Array.from({ length: heads * d * cols }, (_, i) => i);
  // numpy: out[h, j, i, :] = w[h, i, j, :] with w viewed as [heads, 2, d/2, cols]
  const want = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < d / 2; j++) {
        for (let c = 0; c < cols; c++) {
          want[((h * (d / 2) + j) * 2 + i) * cols + c] = w[((h * 2 + i) * (d / 2) + j) * cols + c];
        }
      }
    }
  }
  assert.deepEqual(permuteRows(w, heads, cols, true), want);
  assert.deepEqual(permuteRows(want, heads, cols, false), w);
});

Deno.test("gguf: written files carry llama.cpp's layout: q/k rows interleaved for llama, as-is for qwen2/qwen3", async () => {
  await using d = await tempDir();
  for (const name of ["llama", "mistral", "qwen2", "qwen3"]) {
    const dir = models.get(name)!;
    const out = join(d.path, `${name}.gguf`);
    await convertToGguf(dir, out, "f32");
    const st = await openCheckpoint(dir);
    const h = await readGgufHeader(out);
    const c = st.config;
    for (const [proj, heads] of [["q", c.heads], ["k", c.kvHeads], ["v", 0]] as const) {
      const hf = await loadTensor(st, `model.layers.1.self_attn.${proj}_proj.weight`);
      const raw = await readTensorF32(h, h.tensors.find((t) => t.name === `blk.1.attn_${proj}.weight`)!);
      // llama.cpp's convert_hf_to_gguf.py permutes q/k for LlamaModel (llama, mistral); Qwen2/Qwen3 use NEOX RoPE
      const permuted = (name === "llama" || name === "mistral") && heads > 0;
      assert.deepEqual(raw, permuted ? permuteRows(hf, heads, c.hidden, true) : hf, `${name} ${proj}`);
    }
    assert.equal(h.metadata.get("general.architecture")?.value, name === "mistral" ? "llama" : name);
  }
});

// ---------------------------------------------------------------------------
// round trip: safetensors → GGUF → tome gives the safetensors path's logits

const IDS = [5, 17, 40, 99, 3, 200, 7, 8, 150, 42, 11, 300];

async function referenceLogits(model: string): Promise<Float32Array> {
  const ckpt = await openCheckpoint(model);
  return forward(ckpt.config, await loadWeights(ckpt), IDS, IDS.map((_, i) => i)).logits;
}

Deno.test("gguf: round trip of every tiny architecture: f32 exact, f16 and q8_0 within their rounding", async () => {
  await using d = await tempDir();
  for (const m of TINY_MODELS) {
    const dir = models.get(m.name)!;
    const want = await referenceLogits(dir);
    let scale = 0;
    for (const x of want) scale = Math.max(scale, Math.abs(x));
    for (const [type, tol] of [["f32", 1e-5], ["f16", 0.01 * scale], ["q8_0", 0.1 * scale]] as const) {
      const out = join(d.path, `${m.name}-${type}.gguf`);
      await convertToGguf(dir, out, type);
      const got = await referenceLogits(out);
      const diff = maxAbsDiff(got, want);
      assert.ok(diff <= tol, `${m.name} ${type}: max |Δlogit| ${diff} > ${tol} (logit scale ${scale})`);
      if (type === "f32") {
        const a = (await openCheckpoint(dir)).config, b = (await openCheckpoint(out)).config;
        // what GGUF legitimately changes: Mistral is `llama`, torch_dtype and Mistral's window are not
        // stored, llama3 RoPE becomes rope_freqs divisors (same frequencies)
        const same = {
          arch: a.arch === "mistral" ? "llama" : a.arch,
          dtype: null,
          slidingWindow: null,
          rmsEps: Math.fround(a.rmsEps), // stored as f32, as llama.cpp does
          ropeTheta: Math.fround(a.ropeTheta),
        };
        assert.deepEqual({ ...b, ropeScaling: null }, { ...a, ...same, ropeScaling: null }, m.name);
        assert.equal(b.ropeScaling?.type ?? null, a.ropeScaling?.type === "llama3" ? "factors" : a.ropeScaling);
        assertClose(inverseFrequencies(b), inverseFrequencies(a), `${m.name} RoPE frequencies`);
      }
    }
  }
});

Deno.test("gguf: the ONNX graph built from a GGUF gives the safetensors graph's logits", async () => {
  for (const name of ["llama", "qwen3"]) {
    const dir = models.get(name)!;
    const gguf = join(root, `${name}-graph.gguf`);
    await convertToGguf(dir, gguf, "f32");
    const logits = [];
    for (const m of [dir, gguf]) {
      const ckpt = await openCheckpoint(m);
      const opts = { ...DEFAULT_GRAPH_OPTIONS, logits: "all" as const };
      const s = await ModelSession.open(ckpt.config, opts, (await graphFor(ckpt, opts)).path);
      const r = await s.run({ ids: IDS, positions: IDS.map((_, i) => i), past: emptyPast(ckpt.config, "float32") });
      logits.push(r.logits!);
      await s.close();
    }
    assert.ok(maxAbsDiff(logits[0], logits[1]) <= 1e-5, `${name}: ${maxAbsDiff(logits[0], logits[1])}`);
  }
});

// ---------------------------------------------------------------------------
// tokenizers from metadata, against the original tokenizer.json

async function corpusText(): Promise<string> {
  const war = await Deno.readTextFile(join(CORPUS, "war_and_peace.txt"));
  const shakespeare = await Deno.readTextFile(join(CORPUS, "tinyshakespeare.txt"));
  return war.slice(200_000, 260_000) + shakespeare.slice(0, 30_000) +
    "\n\tCode: x = f(1234567) + 'it''s' — naïve café 東京 🙂  \r\n  <|im_start|> </s> end";
}

Deno.test({
  name: "gguf: the SmolLM2 tokenizer (byte-level BPE) from metadata gives the original's ids, template and specials",
  ignore: !hasShared,
  fn: async () => {
    await using d = await tempDir();
    const dir = join(d.path, "smol");
    await makeRandomModel(dir, {
      arch: "llama",
      shape: SIZES.tiny,
      seed: 1,
      dtype: "F32",
      tokenizer: SMOLLM2_TOKENIZER,
    });
    const gguf = join(d.path, "smol.gguf");
    await convertToGguf(dir, gguf, "q8_0");
    const want = await loadTokenizer(SMOLLM2_TOKENIZER);
    const got = await loadTokenizer(gguf);
    const text = await corpusText();
    const ids = want.encode(text);
    assert.deepEqual(got.encode(text), ids);
    const prompt = "<|im_start|>user\nHello 42<|im_end|>\n<|im_start|>assistant\n";
    assert.deepEqual(got.encodePrompt(prompt), want.encodePrompt(prompt));
    assert.equal(got.decode(ids.slice(0, 500)), want.decode(ids.slice(0, 500)));
    assert.equal(got.vocabSize, want.vocabSize);
    for (const k of ["chat_template", "bos_token", "eos_token"]) assert.equal(got.config[k], want.config[k], k);
    const h = await readGgufHeader(gguf);
    assert.equal(h.metadata.get("tokenizer.ggml.pre")?.value, "smollm");
    // the pre-tokenizer read back is the original's (digits never meet spaces in this vocabulary's merges,
    // so ids alone would not show a GPT-2 splitting in its place)
    const original = JSON.parse(await Deno.readTextFile(join(SMOLLM2_TOKENIZER, "tokenizer.json")));
    assert.deepEqual(tokenizerFromGguf(h).json.pre_tokenizer, original.pre_tokenizer);
    const c = (await openCheckpoint(gguf)).config;
    assert.deepEqual([c.bosTokenId, c.eosTokenIds], [want.tokenToId("<|im_start|>"), [want.tokenToId("<|im_end|>")]]);
  },
});

Deno.test({
  name: "gguf: a SentencePiece-style tokenizer (byte fallback, scores) from metadata gives the original's ids",
  ignore: !hasShared,
  fn: async () => {
    const dir = models.get("llama")!; // made with the SentencePiece-style test tokenizer
    const gguf = join(root, "spm.gguf");
    await convertToGguf(dir, gguf, "f32");
    const want = await loadTokenizer(dir);
    const got = await loadTokenizer(gguf);
    assert.equal((await readGgufHeader(gguf)).metadata.get("tokenizer.ggml.model")?.value, "llama");
    const text = await corpusText();
    const ids = want.encode(text);
    assert.ok(ids.some((i) => /^<0x/.test(want.idToToken(i)!)), "the text exercises byte fallback");
    assert.deepEqual(got.encode(text), ids);
    assert.equal(got.decode(ids), want.decode(ids));
  },
});

/**
 * SentencePiece BPE by brute force, as llama.cpp's SPM tokenizer runs it: "▁" for
 * spaces and in front, then repeatedly merge the adjacent pair whose concatenation
 * is a token with the highest score (leftmost on ties); leftovers become bytes.
 */
function spmBruteForce(text: string, vocab: Map<string, number>, scores: Map<string, number>): number[] {
  let syms = [..."▁" + text.replaceAll(" ", "▁")];
  for (;;) {
    let best = -1, bestScore = -Infinity;
    for (let i = 0; i + 1 < syms.length; i++) {
      const s = scores.get(syms[i] + syms[i + 1]);
      if (s !== undefined && s > bestScore) [best, bestScore] = [i, s];
    }
    if (best < 0) break;
    syms = [...syms.slice(0, best), syms[best] + syms[best + 1], ...syms.slice(best + 2)];
  }
  return syms.flatMap((s) =>
    vocab.has(s)
      ? [vocab.get(s)!]
      : [...new TextEncoder().encode(s)].map((b) => vocab.get(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`)!)
  );
}

Deno.test({
  name: "gguf: without stored merges, merges derived from scores tokenize as SentencePiece does (brute force)",
  ignore: !hasShared,
  fn: async () => {
    const json = sentencepieceStyleTokenizer();
    const model = json.model as { vocab: Record<string, number>; merges: string[] };
    const meta = tokenizerMetadata(json, { bos_token: "<s>", eos_token: "</s>" }, 0, "test");
    meta.delete("tokenizer.ggml.merges"); // as llama.cpp's converter writes SentencePiece vocabularies
    const h = { path: "test.gguf", metadata: meta } as unknown as GgufHeader;
    const t = tokenizerFromGguf(h);
    const tok = tokenizerFromJson(t.json, t.config, "test.gguf");
    const tokens = meta.get("tokenizer.ggml.tokens")!.value as string[];
    const scoreList = meta.get("tokenizer.ggml.scores")!.value as number[];
    const types = meta.get("tokenizer.ggml.token_type")!.value as number[];
    const vocab = new Map(Object.entries(model.vocab));
    const scores = new Map<string, number>();
    tokens.forEach((s, i) => types[i] === 1 && scores.set(s, scoreList[i]));
    const text = (await corpusText()).slice(0, 20_000);
    let checked = 0;
    for (const line of text.split("\n")) {
      if (!line) continue;
      assert.deepEqual(tok.encode(line), spmBruteForce(line, vocab, scores), line);
      checked++;
    }
    assert.ok(checked > 30, `${checked} lines`);
  },
});

// ---------------------------------------------------------------------------
// ollama:NAME[:TAG]

Deno.test("gguf: ollama: names resolve through a fake store, with clear errors naming what was looked for", async () => {
  await using d = await tempDir();
  const store = join(d.path, "models");
  const gguf = join(root, "ollama-src.gguf");
  await convertToGguf(models.get("qwen2")!, gguf, "f16");
  const hex = "ab".repeat(32);
  await Deno.mkdir(join(store, "blobs"), { recursive: true });
  await Deno.copyFile(gguf, join(store, "blobs", `sha256-${hex}`));
  const manifest = (digest: string, type = "application/vnd.ollama.image.model") =>
    JSON.stringify({
      schemaVersion: 2,
      layers: [
        { mediaType: "application/vnd.ollama.image.template", digest: `sha256:${"cd".repeat(32)}`, size: 10 },
        { mediaType: type, digest: `sha256:${digest}`, size: 1 },
      ],
    });
  const put = async (path: string, text: string) => {
    await Deno.mkdir(join(store, "manifests", path, ".."), { recursive: true });
    await Deno.writeTextFile(join(store, "manifests", path), text);
  };
  await put("registry.ollama.ai/library/tiny/latest", manifest(hex));
  await put("registry.ollama.ai/library/tiny/q8", manifest(hex));
  await put("registry.ollama.ai/someone/other/v1", manifest(hex));
  await put("registry.ollama.ai/library/nolayer/latest", manifest(hex, "application/vnd.ollama.image.license"));
  await put("registry.ollama.ai/library/noblob/latest", manifest("ef".repeat(32)));
  await put("registry.ollama.ai/library/broken/latest", "{not json");
  const before = Deno.env.get("OLLAMA_MODELS");
  Deno.env.set("OLLAMA_MODELS", store);
  try {
    const blob = join(store, "blobs", `sha256-${hex}`);
    for (const spec of ["ollama:tiny", "ollama:tiny:latest", "ollama:tiny:q8", "ollama:someone/other:v1"]) {
      assert.equal(await resolveOllama(spec), blob, spec);
    }
    const want = (await openCheckpoint(gguf)).config;
    assert.deepEqual((await openCheckpoint("ollama:tiny:q8")).config, want);
    assert.equal((await loadTokenizer("ollama:tiny")).vocabSize, (await loadTokenizer(gguf)).vocabSize);
    const missing = join(store, "manifests", "registry.ollama.ai", "library", "nope", "7b");
    await rejectsInvalid(resolveOllama("ollama:nope:7b"), new RegExp(`no manifest ${missing}`), "notFound");
    await rejectsInvalid(resolveOllama("ollama:nolayer"), /no application\/vnd\.ollama\.image\.model layer/);
    await rejectsInvalid(resolveOllama("ollama:noblob"), /blob .*sha256-efef.* is missing/, "notFound");
    await rejectsInvalid(resolveOllama("ollama:broken"), /not valid JSON/);
    await rejectsInvalid(resolveOllama("ollama:../etc"), /not an Ollama model name/, "usage");
    await rejectsInvalid(resolveOllama("ollama:"), /not an Ollama model name/, "usage");
  } finally {
    if (before === undefined) Deno.env.delete("OLLAMA_MODELS");
    else Deno.env.set("OLLAMA_MODELS", before);
  }
});

// ---------------------------------------------------------------------------
// the CLI

Deno.test("gguf: tome convert, inspect and ask on a GGUF file; bad input is one line and its exit code", async () => {
  await using d = await tempDir();
  const dir = models.get("mistral")!;
  const out = join(d.path, "m.gguf");
  const env = { TOME_CACHE: join(root, "cache") };
  const conv = await tome(["convert", dir, "--type", "q8_0", "--out", out, "--json"], { env });
  assert.equal(conv.code, 0, conv.stderr);
  assert.deepEqual(JSON.parse(conv.stdout).types, { Q8_0: 16, F32: 5 }); // untied: lm_head too
  const names = [...Deno.readDirSync(d.path)].map((e) => e.name);
  assert.deepEqual(names, ["m.gguf"], "no temporary file left beside the output");
  const inspect = await tome(["inspect", out, "--json"], { env });
  assert.equal(inspect.code, 0, inspect.stderr);
  const info = JSON.parse(inspect.stdout);
  assert.equal(info.arch, "llama");
  assert.deepEqual(info.gguf.types.map((t: { type: string }) => t.type), ["Q8_0", "F32"]);
  assert.deepEqual(info.gguf.tokenizer, { kind: "llama", tokens: 375, pre: null });
  const doc = join(d.path, "doc.txt");
  await Deno.writeTextFile(doc, "the pass code of the war is 4 2. ".repeat(40));
  const ask = await tome(["ask", "what is the code?", doc, "--model", out, "--max-tokens", "4", "--quiet"], { env });
  assert.equal(ask.code, 0, ask.stderr);
  const bad = join(d.path, "bad.gguf");
  await Deno.writeFile(bad, new Raw().head(1, 0).tensor("w", [64, 64], 0, 0).bytes());
  for (
    const [args, code, pattern] of [
      [["inspect", bad], 10, /past the end of the file/],
      [["inspect", join(d.path, "none.gguf")], 3, /not found/],
      [["convert", dir, "--type", "q2_k", "--out", out], 2, /q2_k/],
      [["convert", dir], 2, /--out/],
      [["convert", out, "--out", join(d.path, "x.gguf")], 2, /checkpoint directory/],
      [["ask", "q", doc, "--model", "ollama:nothing-here"], 3, /no manifest/],
    ] as const
  ) {
    const r = await tome([...args], { env: { ...env, OLLAMA_MODELS: d.path } });
    assert.equal(r.code, code, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});
