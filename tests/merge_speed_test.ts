/**
 * The mergers' batched similarity search (onnxruntime MatMul + TopK, settled
 * exactly in JS) against the brute-force searches it replaces:
 * `nearestByCosine` (D2O's) and `nearestCentre` (EMS's) must come out the
 * same, index and similarity bit for bit, ties and near-ties included, on
 * heads of unequal length in one batch; and a D2O or EMS merge fed the
 * batched answer must write exactly the rows it writes searching itself.
 */
import assert from "node:assert/strict";
import { nearestAll } from "../core/model/onnx/similarity.ts";
import { d2o } from "../core/policies/merge/d2o.ts";
import { emsMerge } from "../core/policies/merge/ems.ts";
import type { MergeHead, Merger } from "../core/policies/merge/mod.ts";
import { nearestCentre } from "../kernels/class_merge.ts";
import { cosine, nearestByCosine, rowNorms } from "../kernels/merge.ts";
import { dot4, type NearestSearch, searchMargin, settleNearest, unitRows } from "../kernels/nearest.ts";
import { rng } from "./helpers.ts";

const d = 64;

/**
 * A head's n random rows with traps: exact duplicates (ties, the first must win), near-duplicates (cosines
 * closer than float32 resolves, so the product alone cannot order them), zero rows, and rows far apart.
 */
function head(seed: number, n: number): Float32Array {
  const r = rng(seed);
  const x = Float32Array.from({ length: n * d }, () => r() * 2 - 1);
  for (let i = 0; i < n; i++) {
    const kind = Math.floor(r() * 8);
    const src = Math.floor(r() * n);
    if (kind === 0) x.copyWithin(i * d, src * d, src * d + d); // a duplicate
    else if (kind <= 3) {
      // a near-duplicate: a tiny nudge in one coordinate
      x.copyWithin(i * d, src * d, src * d + d);
      x[i * d + Math.floor(r() * d)] += (r() - 0.5) * 1e-4;
    } else if (kind === 4 && r() < 0.2) x.fill(0, i * d, i * d + d);
  }
  return x;
}

/** Queries and candidates: a random split of the n rows (candidates ascending, as `keep` is). */
function split(seed: number, n: number, kept: number): { queries: Int32Array; candidates: Int32Array } {
  const r = rng(seed);
  const order = Array.from({ length: n }, (_, i) => i).sort(() => r() - 0.5);
  const candidates = Int32Array.from(order.slice(0, kept).sort((a, b) => a - b));
  const queries = Int32Array.from(order.slice(kept).sort((a, b) => a - b));
  return { queries, candidates };
}

Deno.test("batched search: D2O's nearest by cosine, exactly, over heads of unequal length", async () => {
  const shapes = [[300, 200], [180, 60], [40, 1], [90, 89], [120, 30]];
  const heads = shapes.map(([n, kept], k) => {
    const x = head(100 + k, n);
    const norms = rowNorms(x, n, d);
    const { queries, candidates } = split(200 + k, n, kept);
    const s: NearestSearch = {
      queries,
      candidates,
      unit: unitRows(x, n, d),
      exact: (i, j) => cosine(x, d, norms, i, j),
    };
    return { x, norms, s };
  });
  const found = await nearestAll(heads.map((h) => h.s), d);
  let scanned = 0;
  heads.forEach(({ x, norms, s }, k) => {
    const want = nearestByCosine(x, d, norms, s.queries, s.candidates);
    assert.deepEqual(Array.from(found[k].index), Array.from(want.index), `head ${k}: indices`);
    assert.deepEqual(Array.from(found[k].similarity), Array.from(want.similarity), `head ${k}: similarities`);
    // the traps are there: some queries have a rival within the margin of their best
    s.queries.forEach((i) => {
      const sims = Array.from(s.candidates, (j) => cosine(x, d, norms, i, j)).sort((a, b) => b - a);
      if (sims.length > 1 && sims[0] - sims[1] <= searchMargin(d)) scanned++;
    });
  });
  assert.ok(scanned > 20, `${scanned} near-ties`);
});

Deno.test("batched search: EMS's nearest class centre, exactly, all similarities negative in one head", async () => {
  const heads = [[256, 128], [200, 150], [200, 149]].map(([n, kept], k) => {
    const x = head(300 + k, n);
    if (k === 2) {
      // every candidate points away from every query, and one padding column (similarity 0 if unmasked) must never win
      const { queries, candidates } = split(400 + k, n, kept);
      for (const i of queries) x.fill(1, i * d, i * d + d);
      for (const j of candidates) for (let t = 0; t < d; t++) x[j * d + t] = -1 - Math.abs(x[j * d + t]);
    }
    const unit = unitRows(x, n, d);
    const { queries, candidates } = split(400 + k, n, kept);
    const s: NearestSearch = { queries, candidates, unit, exact: (i, j) => dot4(unit, i * d, unit, j * d, d) };
    return { x, s };
  });
  const found = await nearestAll(heads.map((h) => h.s), d);
  heads.forEach(({ x, s }, k) => {
    const want = nearestCentre(x, d, s.queries, s.candidates);
    assert.deepEqual(Array.from(found[k].index), Array.from(want.index), `head ${k}: indices`);
    assert.deepEqual(Array.from(found[k].similarity), Array.from(want.similarity), `head ${k}: similarities`);
  });
  assert.ok(found[2].similarity.every((s) => s < 0));
});

Deno.test("settling: a lead beyond the margin is taken, a near-tie is scanned exactly (first of equals wins)", () => {
  const exact = (_i: number, j: number) => [0.5, 0.9, 0.9, 0.1][j];
  const candidates = Int32Array.from([0, 1, 2, 3]);
  const queries = Int32Array.from([7, 8, 9]);
  const m = searchMargin(d);
  // query 7: candidate 2 leads by far (taken, its exact similarity recomputed); query 8: 2 leads by less than the
  // margin (scanned: 1 and 2 are equal, 1 is first); query 9: not a number (scanned)
  const got = settleNearest(
    queries,
    candidates,
    Int32Array.from([2, 2, 0]),
    Float32Array.from([0.95, 0.9, NaN]),
    Float32Array.from([0.5, 0.9 - m / 2, NaN]),
    m,
    exact,
  );
  assert.deepEqual(Array.from(got.index), [2, 1, 1]);
  assert.deepEqual(Array.from(got.similarity), [0.9, 0.9, 0.9].map(Math.fround));
  const none = settleNearest(
    queries,
    new Int32Array(0),
    new Int32Array(3),
    new Float32Array(3),
    new Float32Array(3),
    m,
    exact,
  );
  assert.deepEqual(Array.from(none.index), [-1, -1, -1]);
});

/** A MergeHead over random rows with traps: n entries, `kept` of them kept, importance random. */
function mergeHead(seed: number, n: number, kept: number): MergeHead {
  const r = rng(seed);
  const keys = head(seed, n);
  const { candidates } = split(seed + 1, n, kept);
  return {
    layer: 0,
    head: seed % 3,
    n,
    d,
    keys,
    values: Float32Array.from({ length: n * d }, () => r()),
    keep: candidates,
    protect: { sinks: 0, recent: 0 },
    positions: Int32Array.from({ length: n }, (_, i) => i),
    importance: Float32Array.from({ length: n }, () => r()),
  };
}

for (const [name, make] of [["d2o", () => d2o()], ["ems", () => emsMerge()]] as [string, () => Merger][]) {
  Deno.test(`${name}: the merge fed the batched search writes exactly what it writes searching itself`, async () => {
    const fast = make(), slow = make();
    // two chunks on the same heads, so the second merges into entries the first merged into
    for (const chunk of [0, 1]) {
      const heads = [mergeHead(10 + chunk, 384, 256), mergeHead(20 + chunk, 300, 100), mergeHead(30 + chunk, 50, 49)];
      const copies = heads.map((h) => ({ ...h, keys: h.keys.slice(), values: h.values.slice() }));
      const searches = heads.map((h) => fast.search!(h)!);
      const found = await nearestAll(searches, d);
      heads.forEach((h, k) => {
        h.nearest = found[k];
        assert.deepEqual(Array.from(fast.merge(h)), Array.from(slow.merge(copies[k])));
        assert.deepEqual(h.keys, copies[k].keys);
        assert.deepEqual(h.values, copies[k].values);
      });
    }
  });
}
