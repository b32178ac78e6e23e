/**
 * KV bytes per tier as a user sees them (issue 16): `tome ask --json` with
 * MiKV's low tier or thin keys reports each tier's bytes and the method,
 * checked against the schema and against entries × entry bytes restated here
 * from the quantization spec and the model's shape; the report and the plain
 * progress line show the low tier's bytes; `tome estimate` predicts each
 * tier's peak exactly as the run's meter counts it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Ajv } from "ajv";
import schema from "./schemas/answer.schema.json" with { type: "json" };
import estimateSchema from "./schemas/estimate.schema.json" with { type: "json" };
import { readConfig } from "../core/model/config.ts";
import { mixedText } from "./fixture_text.ts";
import { hasShared, SMOLLM2_TOKENIZER, tempDir, tome } from "./helpers.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";

const ajv = new Ajv({ allErrors: true });
const validate = ajv.compile(schema);
const validateEstimate = ajv.compile(estimateSchema);
const Q = "What is the pass code of Natasha?";

Deno.test("tome ask --json and tome estimate count KV bytes per tier: MiKV's int4 tier and thin keys", async (t) => {
  await using dir = await tempDir("tome-tiers-cli-");
  const env = { TOME_CACHE: join(dir.path, "cache"), TOME_MODEL: "" };
  const tokenizer = hasShared ? SMOLLM2_TOKENIZER : await writeTestTokenizer(join(dir.path, "tok"));
  const model = join(dir.path, "tiny");
  const made = await tome(["make-model", "tiny", "--out", model, "--tokenizer", tokenizer, "--arch", "qwen2"], { env });
  assert.equal(made.code, 0, made.stderr);
  const { layers: L, kvHeads: K, headDim: d } = await readConfig(model);
  const doc = join(dir.path, "doc.txt");
  await Deno.writeTextFile(doc, mixedText(31, 5000) + "\nThe pass code of Natasha is 48213.\n" + mixedText(32, 2000));
  const args = ["-m", model, "--max-tokens", "6", "--budget", "96", "--chunk", "128", "--positions", "original"];
  const ask = async (...extra: string[]) => {
    const r = await tome(["ask", Q, doc, ...args, "--json", ...extra], { env });
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    const valid: boolean = validate(j);
    assert.ok(valid, JSON.stringify(validate.errors));
    return { j, stderr: r.stderr };
  };
  const estimate = async (...extra: string[]) => {
    const r = await tome(["estimate", doc, ...args, "--question", Q, "--json", ...extra], { env });
    assert.equal(r.code, 0, r.stderr);
    const e = JSON.parse(r.stdout);
    const valid: boolean = validateEstimate(e);
    assert.ok(valid, JSON.stringify(validateEstimate.errors));
    return e;
  };
  /** A whole f16 entry of one layer and KV head: a key and a value of d values. */
  const highEntry = 2 * d * 2;

  await t.step("--keep-evicted int4", async () => {
    const { j, stderr } = await ask("--keep-evicted", "int4");
    // an int4 entry: K and V rows of d values at 4 bits, and a step and a min (f16) per group of 32 (or of d)
    const groups = d % 32 === 0 ? d / 32 : 1;
    const entry = 2 * ((d * 4) / 8 + 2 * groups * 2);
    const budget = Math.floor((96 * highEntry) / entry); // the same bytes as the high tier
    assert.deepEqual(j.method, {
      policy: "snapkv",
      merge: null,
      key_channels: null,
      low_tier: { tier: "int4", group: groups === 1 ? d : 32, params: "f16", budget, entry_bytes: entry },
    });
    assert.equal(j.kv_high_bytes + j.kv_low_bytes, j.kv_bytes);
    // kept counts both tiers' entries (low ones are held and attended): the high tier holds the rest
    const lowEntries = j.kv_low_bytes / entry;
    assert.ok(Number.isInteger(lowEntries) && lowEntries > 0, `low tier bytes ${j.kv_low_bytes}`);
    assert.equal(
      j.kv_high_bytes,
      Math.round(j.kept * L * K - lowEntries) * highEntry,
      "the high tier: kept entries at f16",
    );
    assert.ok(j.kv_low_bytes > 0 && j.kv_low_bytes % entry === 0, `${j.kv_low_bytes} is whole low entries`);
    assert.ok(j.kv_low_peak_bytes <= L * K * budget * entry, "the low tier within its budget");
    assert.ok(j.kv_high_peak_bytes <= j.kv_peak_bytes && j.kv_peak_bytes <= j.kv_high_peak_bytes + j.kv_low_peak_bytes);
    const kib = String.raw`[\d.]+ (?:B|KiB|MiB)`;
    assert.match(stderr, new RegExp(`^tome: {3}high +${kib} +peak ${kib}$`, "m"));
    assert.match(stderr, new RegExp(`^tome: {3}int4 +${kib} +peak ${kib}$`, "m"));
    assert.match(
      stderr,
      new RegExp(`^tome: reading .* · KV ${kib} \\(high ${kib} \\+ int4 ${kib}, peak ${kib}\\) of`, "m"),
    );
    const e = await estimate("--keep-evicted", "int4");
    assert.deepEqual(e.method, j.method);
    assert.deepEqual(
      [e.predicted.kv_peak_bytes, e.predicted.kv_high_peak_bytes, e.predicted.kv_low_peak_bytes],
      [j.kv_peak_bytes, j.kv_high_peak_bytes, j.kv_low_peak_bytes],
      "estimate vs the run, per tier",
    );
  });

  await t.step("--key-channels 0.5", async () => {
    const { j, stderr } = await ask("--key-channels", "0.5");
    assert.deepEqual(j.method.key_channels, { channels: Math.ceil(d / 2), head_dim: d, window: 32 });
    assert.deepEqual([j.kv_low_bytes, j.kv_low_peak_bytes, j.method.low_tier], [0, 0, null]);
    assert.equal(j.kv_high_bytes, j.kv_bytes);
    assert.equal(j.kv_high_peak_bytes, j.kv_peak_bytes);
    assert.ok(j.kv_high_bytes < j.kept * L * K * highEntry, "thin keys hold fewer bytes than whole entries");
    assert.doesNotMatch(stderr, /int4|high/, "no tier rows without a low tier");
    const r = await tome(["estimate", doc, ...args, "--question", Q, "--key-channels", "0.5"], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^thin keys +${Math.ceil(d / 2)} of ${d} key channels`, "m"));
    assert.match(r.stdout, new RegExp(`^KV peak +\\S+ \\S+ \\(${j.kv_peak_bytes} bytes;`, "m"), "estimate = the run");
  });
});
