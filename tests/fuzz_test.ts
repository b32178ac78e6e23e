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

/** No failures, hangs or refused valid inputs, and both sides reached (for targets whose reasons the harness lumps). */
function assertSound(s: FuzzSummary, minAccepted: number, minRejected: number) {
  const detail = JSON.stringify(s.examples.slice(0, 3), null, 1);
  assert.equal(s.cases, 300);
  assert.equal(s.hangs, 0, detail);
  assert.equal(s.failures, 0, detail);
  assert.equal(s.rejectedValid, 0, detail);
  assert.ok(s.accepted >= minAccepted, `only ${s.accepted} accepted`);
  assert.ok(s.rejected >= minRejected, `only ${s.rejected} rejected`);
}

Deno.test("fuzz: saved states (header, frame, payload) from saveState, 300 mutated files", async () => {
  const { stateTarget } = await import("../bench/fuzz/state.ts");
  assertSound(await runFuzz(await stateTarget(), { cases: 300, seed: 13, timeoutMs: 20_000 }), 15, 150);
});

/**
 * Runaway templates (hours of looping, range(1e10), 100M characters) are only
 * fuzzed where rendering has limits (recipes/chat_template.ts, from the
 * tokens branch); without it they would hang the watchdog, as issue 11 says.
 */
const templateLimits = await Deno.stat(new URL("../recipes/chat_template.ts", import.meta.url)).then(
  () => true,
  () => false,
);

Deno.test(`fuzz: chat templates in tokenizer_config.json, 300 mutated configs${templateLimits ? "" : " (no runaway ones: rendering has no limits yet)"}`, async () => {
  const { chatTemplateTarget } = await import("../bench/fuzz/chat_template.ts");
  assertSound(await runFuzz(chatTemplateTarget(templateLimits), { cases: 300, seed: 14, timeoutMs: 20_000 }), 30, 100);
});
