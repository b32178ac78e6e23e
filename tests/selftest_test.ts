/**
 * `tome selftest`: every available device listed and checked, the table and
 * JSON forms, exit 12 for a device that fails — and the check itself catches a
 * graph that disagrees with the reference by a hair.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { maxLogitDelta, type SelftestRow, table, unavailable, verdict } from "../cli/commands/selftest.ts";
import { EXIT, TomeError } from "../core/errors.ts";
import { buildGraph } from "../core/model/graph_build.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { cudaInstalled, webgpuAdapter } from "../core/model/device.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { DEFAULT_GRAPH_OPTIONS } from "../core/model/onnx/decoder.ts";
import { loadWeights } from "../core/model/reference.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";
import { tome } from "./helpers.ts";

Deno.test("tome selftest --json: cpu passes; every available device is listed; exit 0 or 12 as they pass", async () => {
  const r = await tome(["selftest", "--json"]);
  const report = JSON.parse(r.stdout);
  const expected = ["cpu", ...((await webgpuAdapter()) ? ["webgpu"] : []), ...(cudaInstalled() ? ["cuda"] : [])];
  assert.deepEqual(report.devices.map((d: { device: string }) => d.device), expected);
  const cpu = report.devices[0];
  assert.equal(cpu.pass, true);
  assert.equal(cpu.skipped, false);
  assert.ok(cpu.max_abs_logit_diff >= 0 && cpu.max_abs_logit_diff < cpu.tolerance, JSON.stringify(cpu));
  assert.ok(cpu.prefill_tokens_per_s > 100, "the tiny model prefills far faster than 100 tok/s");
  assert.ok(cpu.adapter.length > 0);
  for (const d of report.devices) {
    // passing; or failing, said why; or an unusable software adapter, said why
    assert.ok(d.pass || d.error || d.max_abs_logit_diff >= d.tolerance, JSON.stringify(d));
    if (d.skipped) assert.ok(d.software && d.error && !d.pass, JSON.stringify(d));
  }
  const allPass = report.devices.every((d: { pass: boolean; skipped: boolean }) => d.pass || d.skipped);
  assert.equal(report.pass, allPass);
  // exit 12 exactly when a checked device failed (WebGPU on lavapipe may, until the graph is WebGPU-clean)
  assert.equal(r.code, allPass ? EXIT.ok : EXIT.device, r.stderr);
  if (!allPass) assert.match(r.stderr, /^tome: selftest failed on \w+ \(/m);
  assert.equal(report.model.layers, SIZES.tiny.layers);
});

Deno.test("tome selftest: a table with a header and one row per device", async () => {
  const r = await tome(["selftest"]);
  assert.ok(r.code === EXIT.ok || r.code === EXIT.device, r.stderr);
  const lines = r.stdout.trimEnd().split("\n");
  assert.match(lines[0], /^device\s+adapter\s+result\s+max \|Δlogit\|\s+tolerance\s+prefill tok\/s$/);
  assert.match(lines[1], /^cpu\s+.+\s+pass\s+\d\.\de-\d+\s+1\.0e-4\s+[\d.]+K?$/);
  assert.match(r.stderr, /selftest: a tiny random llama/);
  assert.equal(r.code === EXIT.ok, !/^\S+\s+.*\s+FAIL\s+/m.test(r.stdout), "exit 12 exactly when a row says FAIL");
});

Deno.test("selftest's comparison catches a reference that differs by 1e-3 in one weight", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tome-selftest-test-" });
  try {
    const model = join(dir, "model");
    const tokenizer = await writeTestTokenizer(join(dir, "tokenizer"));
    await makeRandomModel(model, { arch: "qwen3", shape: SIZES.tiny, seed: 3, dtype: "F32", tokenizer });
    const ckpt = await openCheckpoint(model);
    const graph = join(dir, "graph");
    await Deno.mkdir(graph);
    await buildGraph(ckpt, { ...DEFAULT_GRAPH_OPTIONS, logits: "all" }, graph);
    const weights = await loadWeights(ckpt);
    const same = await maxLogitDelta(ckpt, weights, join(graph, "model.onnx"), ["cpu"]);
    assert.ok(same < 1e-4, `graph and reference agree: ${same}`);
    // a graph that is wrong by one weight of the final norm: logit s·v shifts by 1e-3 · h[s]_0 · lm_head[v]_0
    weights.norm = weights.norm.slice();
    weights.norm[0] += 1e-3;
    const off = await maxLogitDelta(ckpt, weights, join(graph, "model.onnx"), ["cpu"]);
    assert.ok(off > 1e-4, `a 1e-3 change in one norm weight shows: ${off}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("selftest verdict: exit 12 when a checked device fails; a skipped software adapter is not a failure", () => {
  const row = (o: Partial<SelftestRow>): SelftestRow => ({
    device: "cpu",
    adapter: "test",
    software: false,
    pass: true,
    skipped: false,
    maxDeltaLogit: 1e-6,
    tolerance: 1e-4,
    prefillTokensPerSecond: 1000,
    ...o,
  });
  assert.equal(verdict([row({})]), null);
  const skipped = row({
    device: "webgpu",
    software: true,
    pass: false,
    skipped: true,
    maxDeltaLogit: null,
    error: "no adapter",
  });
  assert.equal(verdict([row({}), skipped]), null);
  const wrong = verdict([row({}), row({ device: "webgpu", pass: false, maxDeltaLogit: 0.5, tolerance: 2e-3 })]);
  assert.equal(wrong?.code, EXIT.device);
  assert.match(wrong!.message, /^selftest failed on webgpu \(max \|Δlogit\| 5\.0e-1 > 2\.0e-3\)$/);
  const broken = verdict([row({ pass: false, maxDeltaLogit: null, error: "session failed" })]);
  assert.equal(broken?.code, 12);
  assert.match(table([skipped]), /^webgpu\s+test \(software\)\s+skip\s+-/m);
  assert.match(table([skipped]), /^webgpu: not available: no adapter$/m);
});

Deno.test("selftest: only a software adapter onnxruntime cannot start on counts as unavailable", () => {
  const cannotStart = new TomeError("device", "onnxruntime could not start on webgpu: No supported adapters");
  assert.equal(unavailable(true, cannotStart), true);
  assert.equal(unavailable(false, cannotStart), false, "a hardware adapter --device auto would pick must work");
  assert.equal(unavailable(true, new Error("a kernel failed mid-run")), false, "a run that breaks is a failure");
});
