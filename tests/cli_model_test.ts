import assert from "node:assert/strict";
import { join } from "node:path";
import { EXIT } from "../core/errors.ts";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { DEFAULT_GRAPH_OPTIONS } from "../core/model/onnx/decoder.ts";
import { hasShared, SMOLLM2_TOKENIZER, tempDir, tome } from "./helpers.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";

Deno.test("tome make-model tiny + tome inspect, as a user runs them", async () => {
  await using d = await tempDir();
  const tok = hasShared ? SMOLLM2_TOKENIZER : await writeTestTokenizer(join(d.path, "tok"));
  const out = join(d.path, "tiny-qwen3");
  const env = { TOME_CACHE: join(d.path, "cache") };
  const made = await tome(["make-model", "tiny", "--arch", "qwen3", "--out", out, "--tokenizer", tok, "--seed", "4"], {
    env,
  });
  assert.equal(made.code, 0, made.stderr);
  assert.equal(made.stdout, "");
  const ckpt = await openCheckpoint(out);
  assert.equal(ckpt.config.arch, "qwen3");
  assert.equal(ckpt.config.qkNorm, true);
  for (const f of ["config.json", "model.safetensors", "generation_config.json", "tokenizer.json"]) {
    assert.ok((await Deno.stat(join(out, f))).isFile, f);
  }
  const tokenizerJson = JSON.parse(await Deno.readTextFile(join(tok, "tokenizer.json")));
  const vocab = Object.keys(tokenizerJson.model.vocab).length;
  assert.equal(ckpt.config.vocab, Math.max(vocab, ...tokenizerJson.added_tokens.map((t: { id: number }) => t.id + 1)));

  // the same seed gives the same bytes; another seed does not
  const again = join(d.path, "again");
  await tome(["make-model", "tiny", "--arch", "qwen3", "--out", again, "-t", tok, "--seed", "4"]);
  assert.deepEqual(
    await Deno.readFile(join(again, "model.safetensors")),
    await Deno.readFile(join(out, "model.safetensors")),
  );

  const info = await tome(["inspect", out, "--json"], { env });
  assert.equal(info.code, 0, info.stderr);
  const j = JSON.parse(info.stdout);
  const c = ckpt.config;
  let params = 0;
  for (const t of ckpt.tensors.values()) params += t.shape.reduce((a, b) => a * b, 1);
  assert.equal(j.parameters, params);
  assert.equal(j.layers, c.layers);
  assert.equal(j.kv_heads, c.kvHeads);
  assert.equal(j.kv_bytes_per_token.f16, 2 * c.layers * c.kvHeads * c.headDim * 2);
  assert.deepEqual(j.cached_graphs, []);

  const text = await tome(["inspect", out], { env });
  assert.match(text.stdout, /^architecture\s+qwen3, q\/k norm$/m);
  assert.match(text.stdout, /^cached graph\s+none yet/m);

  const previous = Deno.env.get("TOME_CACHE");
  Deno.env.set("TOME_CACHE", env.TOME_CACHE);
  try {
    await graphFor(ckpt, DEFAULT_GRAPH_OPTIONS);
  } finally {
    if (previous === undefined) Deno.env.delete("TOME_CACHE");
    else Deno.env.set("TOME_CACHE", previous);
  }
  const built = await tome(["inspect", out], { env });
  assert.match(built.stdout, /^cached graph\s+default built; 1 variant\(s\): original\/kv-f32\/w-f32\/logits-last$/m);
});

Deno.test("tome make-model and inspect: bad input gets one line and its exit code", async () => {
  await using d = await tempDir();
  const tok = await writeTestTokenizer(join(d.path, "tok"));
  const bad = await tome(["make-model", "tiny", "--arch", "gpt2", "--out", join(d.path, "x"), "-t", tok]);
  assert.equal(bad.code, EXIT.usage);
  assert.match(bad.stderr, /^tome: .*gpt2/);
  const noTok = await tome(["make-model", "tiny", "--out", join(d.path, "x")]);
  assert.equal(noTok.code, EXIT.usage);
  assert.match(noTok.stderr, /--tokenizer/);
  const notEmpty = await tome(["make-model", "tiny", "--out", tok, "-t", tok]);
  assert.equal(notEmpty.code, EXIT.usage);
  assert.match(notEmpty.stderr, /not empty/);
  const notModel = await tome(["inspect", tok]);
  assert.equal(notModel.code, EXIT.modelInvalid);
  assert.equal(notModel.stderr.trim(), `tome: not a model directory (no config.json): ${tok}`);
  const missing = await tome(["inspect", join(d.path, "missing")]);
  assert.equal(missing.code, EXIT.notFound);
  // nothing half-written is left beside the target
  const left = [];
  for await (const e of Deno.readDir(d.path)) left.push(e.name);
  assert.deepEqual(left.sort(), ["tok"]);
});
