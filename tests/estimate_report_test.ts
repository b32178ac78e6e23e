/** `tome estimate`'s output from a hand-built prediction: the JSON shape (against the schema) and the text rows. */
import assert from "node:assert/strict";
import { Ajv } from "ajv";
import estimateSchema from "./schemas/estimate.schema.json" with { type: "json" };
import { type Estimate, estimateJson, estimateText } from "../cli/commands/estimate_report.ts";

const estimate: Estimate = {
  input: { bytes: 1536, files: 1 },
  tokens: 12345,
  model: "/models/tiny",
  device: "cpu",
  policy: "snapkv",
  method: { policy: "snapkv", merge: null, key_channels: null, low_tier: null },
  budget: 1024,
  chunk: 512,
  positions: "original",
  kvDtype: "f16",
  maxTokens: 40,
  kv: {
    prefillPeakBytes: 1048576,
    peakBytes: 2097152,
    afterReadBytes: 1000000,
    endBytes: 1100000,
    fullBytes: 10485760,
    chunks: 25,
    high: { peakBytes: 2097152, afterReadBytes: 1000000, endBytes: 1100000 },
    low: { peakBytes: 0, afterReadBytes: 0, endBytes: 0 },
  },
  peakRssBytes: 314572800,
  seconds: { load: 2.5, tokenize: 0.1234, prefill: 75.5, decode: 12.25 },
  sample: { tokens: 3000, prefillTokensPerSecond: 163.52, decodeTokensPerSecond: 3.2567 },
};

Deno.test("estimateJson: the schema's shape, KV exact, seconds to 3 decimals, rates to 1 and 2", () => {
  const json = estimateJson(estimate);
  const validate = new Ajv({ allErrors: true }).compile(estimateSchema);
  assert.ok(validate(json), JSON.stringify(validate.errors));
  assert.deepEqual(json, {
    input: { bytes: 1536, files: 1 },
    tokens: 12345,
    chunks: 25,
    model: "/models/tiny",
    device: "cpu",
    policy: "snapkv",
    method: { policy: "snapkv", merge: null, key_channels: null, low_tier: null },
    budget: 1024,
    chunk: 512,
    positions: "original",
    kv_dtype: "f16",
    max_tokens: 40,
    predicted: {
      kv_peak_bytes: 2097152,
      kv_prefill_peak_bytes: 1048576,
      kv_after_read_bytes: 1000000,
      kv_high_peak_bytes: 2097152,
      kv_low_peak_bytes: 0,
      kv_high_after_read_bytes: 1000000,
      kv_low_after_read_bytes: 0,
      kv_full_bytes: 10485760,
      peak_rss_bytes: 314572800,
      seconds: { load: 2.5, tokenize: 0.123, prefill: 75.5, decode: 12.25, total: 90.25 },
    },
    sample: { tokens: 3000, prefill_tok_s: 163.5, decode_tok_s: 3.26 },
  });
});

Deno.test("estimateText: one labelled row per figure", () => {
  assert.equal(
    estimateText(estimate),
    [
      "input             1.5 KiB in 1 file(s): 12.3K tokens, 25 chunks of 512",
      "policy            snapkv, budget 1024 entries per layer and head, original positions, cpu",
      "KV peak           2.0 MiB (2097152 bytes; reading 1.0 MiB, answer up to 40 tokens)",
      "KV full cache     10.0 MiB (5× the peak)",
      "peak RSS          ~300 MiB (measured on a 3.00K-token sample)",
      "time              ~1m30s: load 2.5s, prefill 1m16s at 164 tok/s, answer 12s at 3.3 tok/s",
      "",
    ].join("\n"),
  );
});
