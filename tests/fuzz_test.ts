/**
 * The fuzzers of bench/fuzz/ at a fixed seed, 300 cases per target: no
 * untyped error, no hang, no invalid input accepted, no valid input refused —
 * each judged by the fuzzer's own checker, which restates the format's rules.
 */
import assert from "node:assert/strict";
import { configTarget } from "../bench/fuzz/config.ts";
import { type FuzzSummary, runFuzz } from "../bench/fuzz/harness.ts";
import { safetensorsTarget } from "../bench/fuzz/safetensors.ts";

function assertClean(s: FuzzSummary) {
  const detail = JSON.stringify(s.examples.slice(0, 3), null, 1);
  assert.equal(s.cases, 300);
  assert.equal(s.hangs, 0, detail);
  assert.equal(s.failures, 0, detail);
  assert.equal(s.rejectedValid, 0, detail);
  // the mutations reach both sides and many distinct defects
  assert.ok(s.accepted >= 15, `only ${s.accepted} accepted`);
  assert.ok(s.rejected >= 150, `only ${s.rejected} rejected`);
  assert.ok(Object.keys(s.reasons).length >= 15, JSON.stringify(s.reasons));
}

Deno.test("fuzz: safetensors headers, 300 mutated files", async () => {
  assertClean(await runFuzz(safetensorsTarget, { cases: 300, seed: 11, timeoutMs: 20_000 }));
});

Deno.test("fuzz: config.json against the weights, 300 mutated configs", async () => {
  assertClean(await runFuzz(configTarget, { cases: 300, seed: 12, timeoutMs: 20_000 }));
});
