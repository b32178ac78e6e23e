/**
 * tome train from the graph: a feature graph's [q; k; v] and group-max CIS,
 * chunked through onnxruntime, equal the reference forward's (targets.ts,
 * itself checked against one whole-sequence forward in train_test.ts), and
 * the pools stay within their byte budget.
 */
import assert from "node:assert/strict";
import { needleSample } from "../core/train/samples.ts";
import { featureWidth, sampleTargets } from "../core/train/targets.ts";
import { graphSampleTargets, openFeatureSession } from "../core/train/graph_targets.ts";
import { addSegments, type LayerPool, poolCapacity } from "../core/train/pool.ts";
import { uniform } from "../kernels/random.ts";
import { trainingFixture } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-train-graph-" });
Deno.env.set("TOME_CACHE", `${root}/cache`);
const { ckpt, c, weights, tok, corpus } = await trainingFixture(root, 5);

globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));

/** Largest |a − b| over two arrays of one length. */
function maxDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

Deno.test("train graph: features and CIS from the feature graph equal the reference forward's (chunks 64, 29)", async () => {
  const session = await openFeatureSession(ckpt, 1);
  try {
    for (const [len, seed, chunk] of [[150, 3, 64], [200, 4, 29]]) {
      const s = needleSample(corpus, tok, c.bosTokenId, len, seed);
      const want = sampleTargets(c, weights, s, 40);
      const got = await graphSampleTargets(session, s, chunk);
      assert.equal(got.N, want.N);
      assert.ok(s.ids.length - 1 - got.N >= 2, "the window holds several queries");
      for (let l = 0; l < c.layers; l++) {
        assert.equal(got.features[l].length, want.N * featureWidth(c));
        assert.ok(maxDiff(got.features[l], want.features[l]) <= 1e-4, `features, layer ${l}`);
        assert.ok(maxDiff(got.cis[l], want.cis[l]) <= 1e-4, `CIS, layer ${l}`);
        // not trivially equal: the CIS varies across tokens
        assert.ok(Math.max(...want.cis[l]) > 4 * Math.min(...want.cis[l]));
      }
    }
  } finally {
    await session.close();
  }
});

Deno.test("train graph: a pool keeps at most its capacity of segments, a uniform reservoir of all it was offered", () => {
  const F = 3, K = 1, seg = 2, layers = 1;
  const cap = poolCapacity({ poolBytes: 5 * seg * (F + K) * 4, segment: seg }, layers, F, K);
  assert.equal(cap, 5);
  const counts = new Array(40).fill(0);
  for (let trial = 0; trial < 400; trial++) {
    const pools: LayerPool[] = [{ x: [], y: [], seen: 0 }];
    const rnd = uniform(trial + 1);
    for (let i = 0; i < 40; i++) {
      const t = { N: seg, features: [new Float32Array(seg * F).fill(i)], cis: [new Float32Array(seg * K).fill(i)] };
      addSegments(pools, t, [[0]], seg, F, K, cap, rnd);
    }
    assert.equal(pools[0].x.length, cap);
    assert.equal(pools[0].seen, 40);
    for (let j = 0; j < cap; j++) {
      assert.equal(pools[0].x[j][0], pools[0].y[j][0]);
      counts[pools[0].x[j][0]]++;
    }
  }
  // each of the 40 offers is kept with probability 5/40: 50 of 400 trials expected, early and late alike
  const early = counts.slice(0, 20).reduce((a, b) => a + b, 0), late = counts.slice(20).reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(early - late) < 0.2 * (early + late), `early ${early}, late ${late}`);
});
