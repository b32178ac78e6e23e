/**
 * What the evaluations' trials add up to, against sums worked out by hand:
 * per (policy, budget) needle and fidelity summaries, the heatmap's cells and
 * the critical KV footprint.
 */
import assert from "node:assert/strict";
import type { FidelityRow } from "../core/eval/fidelity.ts";
import type { NiahRow } from "../core/eval/niah.ts";
import {
  criticalFootprint,
  niahCells,
  type NiahSummary,
  summarizeFidelity,
  summarizeNiah,
} from "../core/eval/summary.ts";

/** A trial with the fields the summaries read; the rest fixed. */
function niah(
  policy: string,
  budget: number | null,
  length: number,
  depth: number,
  exact: boolean,
  partial: number,
  footprint: number,
  peak_fraction: number,
  kv_peak_bytes: number,
): NiahRow {
  return {
    policy,
    budget,
    length,
    tokens: length,
    depth,
    placed: depth,
    trial: 0,
    positions: "original",
    code: "12345",
    answer: exact ? "12345" : "",
    exact,
    partial,
    kv_peak_bytes,
    // a low tier beside the high one: their peaks need not add up to the whole's
    kv_high_peak_bytes: (kv_peak_bytes * 3) / 4,
    kv_low_peak_bytes: Math.round(1000 * (1 - footprint)),
    kv_full_bytes: 1000,
    footprint,
    // bytes-time below entries-time, as with a low tier
    footprint_bytes: footprint / 2,
    peak_fraction,
    seconds: 1,
  };
}

// the order runs yield them: per trial, every (policy, budget)
const rows = [
  niah("full", null, 512, 0, true, 1, 1, 1, 1000),
  niah("snapkv", 64, 512, 0, true, 1, 0.25, 0.3, 100),
  niah("snapkv", 128, 512, 0, true, 1, 0.5, 0.6, 500),
  niah("full", null, 512, 0.2501, true, 1, 1, 1, 1000),
  niah("snapkv", 64, 512, 0.2501, false, 0.4, 0.35, 0.5, 300),
  niah("snapkv", 128, 512, 0.2501, false, 0.6, 0.5, 0.6, 500),
  niah("snapkv", 64, 512, 0.25, false, 0.2, 0.3, 0.4, 200),
  niah("snapkv", 64, 1024, 0.25, true, 1, 0.15, 0.2, 150),
];

const near = (actual: number, expected: number, what: string) =>
  assert.ok(Math.abs(actual - expected) < 1e-12, `${what}: ${actual}, expected ${expected}`);

Deno.test("summarizeNiah: recall, partial, footprint means and the largest peak per (policy, budget), first-seen order", () => {
  const s = summarizeNiah(rows);
  assert.deepEqual(s.map((x) => [x.policy, x.budget, x.trials]), [
    ["full", null, 2],
    ["snapkv", 64, 4],
    ["snapkv", 128, 2],
  ]);
  const [full, b64, b128] = s;
  assert.deepEqual(full, {
    policy: "full",
    budget: null,
    trials: 2,
    recall: 1,
    partial: 1,
    footprint: 1,
    footprint_bytes: 0.5,
    peak_fraction: 1,
    kv_peak_bytes: 1000,
    kv_high_peak_bytes: 750,
    kv_low_peak_bytes: 0,
  });
  near(b64.recall, 2 / 4, "recall"); // exact at 512/0 and 1024/25
  near(b64.partial, (1 + 0.4 + 0.2 + 1) / 4, "partial");
  near(b64.footprint, (0.25 + 0.35 + 0.3 + 0.15) / 4, "footprint");
  near(b64.footprint_bytes, (0.25 + 0.35 + 0.3 + 0.15) / 8, "footprint in bytes");
  near(b64.peak_fraction, (0.3 + 0.5 + 0.4 + 0.2) / 4, "peak fraction");
  assert.equal(b64.kv_peak_bytes, 300);
  // each tier's largest peak, from whichever trial held it (the low tier's is not the whole's trial)
  assert.deepEqual([b64.kv_high_peak_bytes, b64.kv_low_peak_bytes], [225, 850]);
  near(b128.recall, 1 / 2, "recall b128");
  near(b128.partial, (1 + 0.6) / 2, "partial b128");
});

Deno.test("niahCells: recall per (policy, budget, length, depth in whole percent)", () => {
  const cells = niahCells(rows).map((c) => ({ ...c, recall: Math.round(1e9 * c.recall) / 1e9 }));
  assert.deepEqual(cells, [
    { policy: "full", budget: null, length: 512, depth: 0, trials: 1, recall: 1 },
    { policy: "snapkv", budget: 64, length: 512, depth: 0, trials: 1, recall: 1 },
    { policy: "snapkv", budget: 128, length: 512, depth: 0, trials: 1, recall: 1 },
    { policy: "full", budget: null, length: 512, depth: 25, trials: 1, recall: 1 },
    // depths 0.2501 and 0.25 share the 25% cell; the 1024-token haystack has its own
    { policy: "snapkv", budget: 64, length: 512, depth: 25, trials: 2, recall: 0 },
    { policy: "snapkv", budget: 128, length: 512, depth: 25, trials: 1, recall: 0 },
    { policy: "snapkv", budget: 64, length: 1024, depth: 25, trials: 1, recall: 1 },
  ]);
  const half = niahCells([rows[1], rows[1], rows[4], { ...rows[4], depth: 0 }]);
  assert.deepEqual(half.map((c) => [c.depth, c.trials, c.recall]), [[0, 3, 2 / 3], [25, 1, 0]]);
});

Deno.test("summarizeFidelity: mean KL, top-1 agreement and footprints per (policy, budget)", () => {
  const row = (policy: string, budget: number, kl: number, top1_agree: boolean, footprint: number, pf: number) =>
    ({
      policy,
      budget,
      length: 512,
      depth: 0.5,
      trial: 0,
      kl,
      top1_agree,
      footprint,
      peak_fraction: pf,
    }) as FidelityRow;
  const s = summarizeFidelity([
    row("snapkv", 256, 0.1, true, 0.2, 0.3),
    row("snapkv", 1024, 0.01, true, 0.9, 1),
    row("streaming", 256, 0.5, false, 0.2, 0.25),
    row("snapkv", 256, 0.3, false, 0.4, 0.5),
    row("snapkv", 256, 0.2, true, 0.3, 0.4),
  ]);
  assert.deepEqual(s.map((x) => [x.policy, x.budget, x.trials]), [["snapkv", 256, 3], ["snapkv", 1024, 1], [
    "streaming",
    256,
    1,
  ]]);
  near(s[0].kl, 0.6 / 3, "kl");
  near(s[0].top1_agreement, 2 / 3, "agreement");
  near(s[0].footprint, 0.9 / 3, "footprint");
  near(s[0].peak_fraction, 1.2 / 3, "peak fraction");
  assert.deepEqual(s[2], {
    policy: "streaming",
    budget: 256,
    trials: 1,
    kl: 0.5,
    top1_agreement: 0,
    footprint: 0.2,
    peak_fraction: 0.25,
  });
});

Deno.test("criticalFootprint: the smallest footprint with ≥ 90% of the full cache's recall, else null", () => {
  const at = (policy: string, budget: number, recall: number, footprint: number, bytes = footprint): NiahSummary => ({
    policy,
    budget,
    trials: 1,
    recall,
    partial: 0,
    footprint,
    footprint_bytes: bytes,
    peak_fraction: 0,
    kv_peak_bytes: 0,
    kv_high_peak_bytes: 0,
    kv_low_peak_bytes: 0,
  });
  const summary = [at("a", 256, 1, 0.4), at("a", 64, 0.5, 0.1), at("a", 128, 0.95, 0.2), at("b", 256, 0.2, 0.4)];
  const c = criticalFootprint(summary, 1);
  assert.deepEqual([...c], [["a", 0.2], ["b", null]]);
  // 90% of a full recall of 0.5 is 0.45: a's 64 reaches it
  assert.equal(criticalFootprint(summary, 0.5).get("a"), 0.1);
  assert.equal(criticalFootprint(summary, 1, 0.2).get("b"), 0.4);
  // in bytes-time the smallest may be another budget's (a low tier holds more entries in fewer bytes)
  const mixed = [at("c", 1, 1, 0.3, 0.1), at("c", 2, 1, 0.2, 0.15)];
  assert.equal(criticalFootprint(mixed, 1).get("c"), 0.2);
  assert.equal(criticalFootprint(mixed, 1, 0.9, true).get("c"), 0.1);
});
