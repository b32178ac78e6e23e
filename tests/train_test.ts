/**
 * tome train: the MLP's gradients against finite differences, the CIS targets
 * against one unchunked forward, a short training that lowers the loss and
 * outranks random heads on held-out CIS, the file loading through
 * --retaining-heads into `tome eval`, and duo's per-head measurement.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { adamState, adamwStep, clipGradNorm, type Mlp, mlpBackward, mlpForward, zeroMlp } from "../kernels/mlp.ts";
import { normals, uniform } from "../kernels/random.ts";
import { readRetainingHeads } from "../core/model/onnx/retaining.ts";
import { forward } from "../core/model/reference.ts";
import { parseDuoMask } from "../core/policies/duo.ts";
import { measureDuo, streamingHead } from "../core/train/duo.ts";
import {
  buildPools,
  initHead,
  LOCRET_DEFAULTS,
  type LocretTrainOptions,
  referenceTargets,
  trainHeads,
} from "../core/train/locret.ts";
import { locretLoss } from "../core/train/loss.ts";
import { needleSample } from "../core/train/samples.ts";
import { featureWidth, prefill, sampleTargets, step } from "../core/train/targets.ts";
import { tome } from "./helpers.ts";
import { trainingFixture } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-train-" });
const { dir: tiny, c, weights, tok, corpus } = await trainingFixture(root, 3);

globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));

function randomMlp(F: number, hidden: number, K: number, seed: number): Mlp {
  const r = uniform(seed);
  return {
    w1: normals(r, hidden * F, 0.5),
    b1: normals(r, hidden, 0.5),
    w2: normals(r, K * hidden, 0.5),
    b2: normals(r, K, 0.5),
  };
}

Deno.test("train: the MLP's backward of Locret's loss equals central finite differences", () => {
  const [F, hidden, K, N, seg] = [5, 4, 2, 6, 3];
  const p = randomMlp(F, hidden, K, 1);
  const x = normals(uniform(2), N * F);
  // targets far and near, so both SmoothL1 branches run
  const y = Float32Array.from(normals(uniform(3), N * K, 2));
  const loss = () => locretLoss(mlpForward(p, x, N, F).r, y, N, K, seg, 0.3).loss;
  const tape = mlpForward(p, x, N, F);
  const grad = zeroMlp(F, hidden, K);
  mlpBackward(p, x, N, F, tape, locretLoss(tape.r, y, N, K, seg, 0.3).dr, grad);
  for (const name of ["w1", "b1", "w2", "b2"] as const) {
    for (let i = 0; i < p[name].length; i++) {
      const keep = p[name][i];
      const eps = 1e-2;
      p[name][i] = keep + eps;
      const up = loss();
      p[name][i] = keep - eps;
      const down = loss();
      p[name][i] = keep;
      const fd = (up - down) / (2 * eps);
      assert.ok(Math.abs(fd - grad[name][i]) <= 2e-3 + 2e-2 * Math.abs(fd), `${name}[${i}]: ${grad[name][i]} vs ${fd}`);
    }
  }
});

Deno.test("train: clipping bounds the global norm; AdamW's first step moves each weight by lr·(sign + decay)", () => {
  const g = randomMlp(3, 2, 1, 4);
  const before = Math.hypot(...[g.w1, g.b1, g.w2, g.b2].flatMap((t) => [...t]));
  assert.ok(Math.abs(clipGradNorm(g, 0.5) - before) < 1e-5 * before);
  assert.ok(Math.abs(Math.hypot(...[g.w1, g.b1, g.w2, g.b2].flatMap((t) => [...t])) - 0.5) < 1e-5);
  const p = randomMlp(3, 2, 1, 5);
  const w0 = p.w1.slice(), b0 = p.b1.slice();
  const o = { lr: 0.01, beta1: 0.9, beta2: 0.95, eps: 1e-12, weightDecay: 0.1 };
  adamwStep(p, g, adamState(p), o);
  // bias-corrected m̂/√v̂ = sign(g) on the first step; weights decay, biases do not
  for (let i = 0; i < w0.length; i++) {
    assert.ok(Math.abs(p.w1[i] - (w0[i] - o.lr * (Math.sign(g.w1[i]) + o.weightDecay * w0[i]))) < 1e-6);
  }
  for (let i = 0; i < b0.length; i++) assert.ok(Math.abs(p.b1[i] - (b0[i] - o.lr * Math.sign(g.b1[i]))) < 1e-6);
});

Deno.test("train: CIS targets from a chunked prefill equal one whole-sequence forward (max over queries and group)", () => {
  const s = needleSample(corpus, tok, c.bosTokenId, 120, 9);
  const t = sampleTargets(c, weights, s, 32);
  const all = forward(c, weights, s.ids, s.ids.map((_, i) => i));
  const { heads: H, kvHeads: K } = c;
  const T = s.ids.length;
  const F = featureWidth(c);
  assert.equal(t.N, s.answerStart - 1);
  for (let l = 0; l < c.layers; l++) {
    for (let n = 0; n < t.N; n += 7) {
      for (let k = 0; k < K; k++) {
        let want = 0;
        for (let h = k * H / K; h < (k + 1) * H / K; h++) {
          for (let q = s.answerStart - 1; q < T - 1; q++) want = Math.max(want, all.probs[l][(h * T + q) * T + n]);
        }
        assert.ok(Math.abs(t.cis[l][n * K + k] - want) < 1e-5, `layer ${l} token ${n} head ${k}`);
      }
      // features: [q; k; v] of the token
      const { q, k, v } = all.projections[l];
      const qd = H * c.headDim, kd = K * c.headDim;
      const f = t.features[l].subarray(n * F, (n + 1) * F);
      assert.ok(Math.abs(f[3] - q[n * qd + 3]) < 1e-5 && Math.abs(f[qd + 1] - k[n * kd + 1]) < 1e-5);
      assert.ok(Math.abs(f[qd + kd + 2] - v[n * kd + 2]) < 1e-5);
    }
  }
});

/** Mean over samples and heads of |top-k by score ∩ top-k by CIS| / k. */
function recallAtK(heads: Mlp[], samples: ReturnType<typeof sampleTargets>[], k: number): number {
  const F = featureWidth(c);
  const K = c.kvHeads;
  let total = 0, n = 0;
  for (const t of samples) {
    for (let l = 0; l < c.layers; l++) {
      const r = mlpForward(heads[l], t.features[l], t.N, F).r;
      for (let h = 0; h < K; h++) {
        const top = (v: Float32Array) =>
          new Set(Array.from({ length: t.N }, (_, i) => i).sort((a, b) => v[b * K + h] - v[a * K + h]).slice(0, k));
        const want = top(t.cis[l]);
        total += [...top(r)].filter((i) => want.has(i)).length / k;
        n++;
      }
    }
  }
  return total / n;
}

Deno.test("train: a short training lowers the loss and its heads outrank random heads on held-out CIS", async () => {
  const o: LocretTrainOptions = {
    ...LOCRET_DEFAULTS,
    hidden: 32,
    steps: 150,
    lr: 3e-3,
    warmup: 10,
    samples: 8,
    length: 128,
    chunk: 64,
    segment: 16,
    corpus,
    data: [],
  };
  const trained = trainHeads(c, await buildPools(c, referenceTargets(c, weights), tok, o), o);
  assert.ok(trained.lastLoss < 0.7 * trained.firstLoss, `loss ${trained.firstLoss} → ${trained.lastLoss}`);
  const held = [101, 102, 103, 104].map((seed) =>
    sampleTargets(c, weights, needleSample(corpus, tok, c.bosTokenId, 128, seed), 64)
  );
  const F = featureWidth(c);
  const random = Array.from({ length: c.layers }, (_, l) => initHead(F, 32, c.kvHeads, 77, l));
  const [mine, theirs] = [recallAtK(trained.heads, held, 12), recallAtK(random, held, 12)];
  assert.ok(mine > theirs + 0.15, `recall@12 trained ${mine} vs random ${theirs}`);
});

Deno.test("tome train locret writes heads that --retaining-heads loads and tome eval uses; duo writes a mask", async () => {
  const out = join(root, "heads.safetensors");
  const env = { TOME_CACHE: join(root, "cache") };
  const small = ["--samples", "2", "--length", "96", "--chunk", "48", "-q"];
  const bad = await tome(["train", "locret", "-m", tiny, "--out", out, "--steps", "0"], { env });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /^tome: --steps must be an integer ≥ 1, got 0\n$/);
  const r = await tome(["train", "locret", "-m", tiny, "--out", out, "--steps", "5", "--hidden", "8", ...small], {
    env,
  });
  assert.equal(r.code, 0, r.stderr);
  const heads = await readRetainingHeads(out, c);
  assert.equal(heads.length, c.layers);
  assert.equal(heads[0].hidden, 8);
  const bytes = await Deno.readFile(out);
  const len = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const meta = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + len))).__metadata__;
  assert.equal(meta.trained_by, "tome train locret");
  assert.equal(meta.steps, "5");
  const text = join(root, "short.txt");
  await Deno.writeTextFile(text, corpus.slice(0, 6000));
  const ppl = await tome([
    "eval",
    "ppl",
    "-m",
    tiny,
    "--text",
    text,
    "--last",
    "32",
    "--budget",
    "64",
    "--policy",
    "locret",
    "--retaining-heads",
    out,
    "--json",
    "--quiet",
    "--out",
    join(root, "eval"),
  ], { env });
  assert.equal(ppl.code, 0, ppl.stderr);
  const row = JSON.parse(ppl.stdout).rows[0];
  assert.equal(row.policy, "locret");
  assert.ok(Number.isFinite(row.ppl) && row.ppl > 1);
  const mask = join(root, "mask.tsv");
  const d = await tome(["train", "duo", "-m", tiny, "--out", mask, "--recent", "8", "--sinks", "4", ...small], { env });
  assert.equal(d.code, 0, d.stderr);
  const parsed = parseDuoMask(await Deno.readTextFile(mask), c.layers, c.kvHeads, { sparsity: 0.5 });
  assert.equal(parsed.retrieval.flat().filter(Boolean).length, c.layers * c.kvHeads / 2);
});

Deno.test("train duo: a head that keeps its whole cache moves nothing; one cut to sinks + recent does", () => {
  const o = { samples: 1, length: 96, chunk: 48, seed: 2, corpus, data: [] };
  const whole = measureDuo(c, weights, tok, { ...o, sinks: 4, recent: 1000 });
  assert.ok(whole.deviation.flat().every((v) => v < 1e-9), `${whole.deviation}`);
  const cut = measureDuo(c, weights, tok, { ...o, sinks: 2, recent: 4 });
  assert.ok(cut.deviation.flat().every((v) => v > 1e-6), `${cut.deviation}`);
  assert.equal(Math.max(...cut.alpha.flat()), 1);
});

Deno.test("train duo: the streaming head sees exactly its sinks and recent entries, the other heads everything", () => {
  const s = needleSample(corpus, tok, c.bosTokenId, 80, 4);
  const past = prefill(c, weights, s.ids, 60, 32);
  const [l, h, sinks, recent] = [1, 0, 3, 5];
  const cut = streamingHead(c, past, l, h, sinks, recent);
  // the same run on a cache rebuilt by hand: head h of layer l holds only the kept entries, the rest zeros
  const d = c.headDim, P = past.length, K = c.kvHeads;
  const kept = [...Array(P).keys()].filter((t) => t < sinks || t >= P - recent);
  const rebuild = (a: Float32Array) => {
    const y = a.slice();
    y.fill(0, h * P * d, (h + 1) * P * d);
    kept.forEach((t, i) => {
      for (let j = 0; j < d; j++) y[(h * P + i) * d + j] = a[(h * P + t) * d + j];
    });
    return y;
  };
  const hand = {
    length: P,
    layers: past.layers.map((x, i) => (i === l ? { keys: rebuild(x.keys), values: rebuild(x.values) } : x)),
    lengths: Array.from(
      { length: c.layers },
      (_, i) => Array.from({ length: K }, (_, k) => (i === l && k === h ? kept.length : P)),
    ),
  };
  const ids = s.ids.slice(60, 70);
  const a = step(c, weights, ids, 60, cut, true).logits;
  const b = step(c, weights, ids, 60, hand, true).logits;
  const full = step(c, weights, ids, 60, past, true).logits;
  assert.ok(a.every((v, i) => Math.abs(v - b[i]) < 1e-4));
  assert.ok(a.some((v, i) => Math.abs(v - full[i]) > 1e-4), "cutting the head changes the output");
});
