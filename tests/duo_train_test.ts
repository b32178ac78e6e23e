/**
 * DuoAttention's gates trained layer by layer (core/train/duo_gates.ts): the
 * full and streaming head outputs against the reference forward (whole cache;
 * cache cut to sinks + recent), the loss and its gradient against the loss
 * restated from the mixed outputs (and finite differences of it), the
 * optimizer against its optimality conditions and random points of the box,
 * and on the retrieval model the gates that pick the copy head, whose mask
 * keeps the answer where the other mask of equal footprint loses it.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { normals, uniform } from "../kernels/random.ts";
import type { ModelConfig } from "../core/model/config.ts";
import { appendEntries, type LayerWeights, linear, type Past, type Weights } from "../core/model/reference.ts";
import { retrievalConfig, retrievalWeights } from "../core/model/retrieval.ts";
import { layerTensorNames } from "../core/model/checkpoint.ts";
import { parseConfig } from "../core/model/config.ts";
import { parseDuoMask } from "../core/policies/duo.ts";
import { streamingHead, trainDuo } from "../core/train/duo.ts";
import {
  accumulate,
  emptyStats,
  gateDirections,
  gateLoss,
  type GateStats,
  headOutputs,
  type LayerInputs,
  trainGates,
} from "../core/train/duo_gates.ts";
import { needleSample, type Sample } from "../core/train/samples.ts";
import { prefill, step } from "../core/train/targets.ts";
import { tome } from "./helpers.ts";
import { trainingFixture } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-duo-" });
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
const { dir: tiny, c, weights, tok, corpus } = await trainingFixture(root, 5);

/** A prefilled cache of P tokens and the window after it, through the reference forward. */
function windowOf(cfg: ModelConfig, w: Weights, ids: number[], P: number, chunk: number) {
  const past = prefill(cfg, w, ids, P, chunk);
  const window = ids.slice(P);
  return { past, window, out: step(cfg, w, window, P, past) };
}

/** Layer l's LayerInputs from a window's forward. */
function inputsOf(cfg: ModelConfig, past: Past, out: ReturnType<typeof step>, l: number, S: number): LayerInputs {
  const { kvHeads: K, headDim: d } = cfg;
  const P = past.length;
  return {
    q: out.queries[l],
    keys: appendEntries(past.layers[l].keys, P, out.newKeys[l], S, K, d),
    values: appendEntries(past.layers[l].values, P, out.newValues[l], S, K, d),
    S,
    P,
  };
}

/** Σ_t probs[h, s, t] · values[kv, t] for every head and query: [S, H, d]. */
function weighted(cfg: ModelConfig, probs: Float32Array, values: Float32Array, S: number, T: number) {
  const { heads: H, kvHeads: K, headDim: d } = cfg;
  const y = new Float32Array(S * H * d);
  for (let h = 0; h < H; h++) {
    const kv = Math.floor(h / (H / K));
    for (let s = 0; s < S; s++) {
      for (let t = 0; t < T; t++) {
        const p = probs[(h * S + s) * T + t];
        for (let i = 0; i < d; i++) y[(s * H + h) * d + i] += p * values[(kv * T + t) * d + i];
      }
    }
  }
  return y;
}

Deno.test("duo gates: full and streaming head outputs equal the reference forward over the whole and the cut cache", () => {
  const s = needleSample(corpus, tok, c.bosTokenId, 90, 6);
  const P = 70, S = 12, [sinks, recent] = [3, 9];
  const { past, window, out } = windowOf(c, weights, s.ids.slice(0, P + S), P, 32);
  const { heads: H, kvHeads: K, headDim: d } = c;
  for (let l = 0; l < c.layers; l++) {
    const a = inputsOf(c, past, out, l, S);
    const mine = headOutputs(c, a, sinks, recent);
    const full = weighted(c, out.probs[l], a.values, S, P + S);
    assert.ok(full.every((v, i) => Math.abs(v - mine.full[i]) < 1e-4), `full, layer ${l}`);
    for (let k = 0; k < K; k++) {
      // the reference forward with KV head k of layer l cut to sinks + recent: its own masking and softmax
      const cut = streamingHead(c, past, l, k, sinks, recent);
      const o = step(c, weights, window, P, cut);
      const vals = appendEntries(cut.layers[l].values, P, o.newValues[l], S, K, d);
      const want = weighted(c, o.probs[l], vals, S, P + S);
      for (let h = k * H / K; h < (k + 1) * H / K; h++) {
        for (let q = 0; q < S; q++) {
          for (let i = 0; i < d; i++) {
            const j = (q * H + h) * d + i;
            assert.ok(Math.abs(want[j] - mine.stream[j]) < 1e-4, `stream, layer ${l} head ${h}`);
          }
        }
      }
    }
    assert.ok(mine.full.some((v, i) => Math.abs(v - mine.stream[i]) > 1e-3), "streaming changes something");
  }
});

/** The layer loss restated from its definition: mix the heads, project, compare; plus λΣα. */
function directLoss(
  cfg: ModelConfig,
  wo: Float32Array,
  o: { full: Float32Array; stream: Float32Array }[],
  alpha: number[],
  lambda: number,
) {
  const { heads: H, kvHeads: K, headDim: d, hidden: D } = cfg;
  let dist = 0, energy = 0;
  for (const { full, stream } of o) {
    const S = full.length / (H * d);
    const mix = full.map((f, i) => {
      const a = alpha[Math.floor(Math.floor(i / d) % H / (H / K))];
      return a * f + (1 - a) * stream[i];
    });
    const yMix = linear(mix, wo, undefined, S, H * d, D);
    const yFull = linear(full, wo, undefined, S, H * d, D);
    for (let i = 0; i < yFull.length; i++) {
      dist += (yMix[i] - yFull[i]) ** 2;
      energy += yFull[i] ** 2;
    }
  }
  return dist / energy + lambda * alpha.reduce((x, y) => x + y, 0);
}

/** Two windows' head outputs and their statistics on one layer of the tiny model. */
function layerData(l: number, sinks: number, recent: number) {
  const outs = [];
  const stats = emptyStats(c.kvHeads);
  for (const seed of [11, 12]) {
    const s = needleSample(corpus, tok, c.bosTokenId, 80, seed);
    const P = 60, S = 10;
    const { past, out } = windowOf(c, weights, s.ids.slice(0, P + S), P, 32);
    const o = headOutputs(c, inputsOf(c, past, out, l, S), sinks, recent);
    outs.push(o);
    const { u, y } = gateDirections(c, weights.layers[l].wo, o, S);
    accumulate(stats, u, y, c.kvHeads, S, c.hidden);
  }
  return { outs, stats };
}

Deno.test("duo gates: the loss equals its definition and its gradient equals central finite differences", () => {
  const lambda = 0.07;
  for (let l = 0; l < c.layers; l++) {
    const { outs, stats } = layerData(l, 2, 6);
    const wo = weights.layers[l].wo;
    const r = uniform(40 + l);
    for (let trial = 0; trial < 3; trial++) {
      const alpha = Array.from({ length: c.kvHeads }, () => r());
      const { loss, grad } = gateLoss(stats, alpha, lambda);
      const want = directLoss(c, wo, outs, alpha, lambda);
      assert.ok(Math.abs(loss - want) < 1e-4 * Math.max(1, want), `loss ${loss} vs ${want}`);
      for (let k = 0; k < c.kvHeads; k++) {
        const eps = 1e-3;
        const up = directLoss(c, wo, outs, alpha.map((a, j) => (j === k ? a + eps : a)), lambda);
        const down = directLoss(c, wo, outs, alpha.map((a, j) => (j === k ? a - eps : a)), lambda);
        const fd = (up - down) / (2 * eps);
        assert.ok(Math.abs(fd - grad[k]) < 2e-3 + 1e-2 * Math.abs(fd), `layer ${l} head ${k}: ${grad[k]} vs ${fd}`);
      }
    }
  }
});

Deno.test("duo gates: trainDuo's per-layer loss and statistics are the definition's on the same sample, with that layer's o_proj", () => {
  const [sinks, recent, lambda] = [2, 6, 0.01];
  const s = needleSample(corpus, tok, c.bosTokenId, 80, 3);
  const r = trainDuo(c, weights, [s], { sinks, recent, chunk: 32, lambda, steps: 5000 });
  const P = s.answerStart - 1;
  const S = s.ids.length - 1 - P;
  const { past, out } = windowOf(c, weights, s.ids.slice(0, P + S), P, 32);
  for (let l = 0; l < c.layers; l++) {
    const heads = headOutputs(c, inputsOf(c, past, out, l, S), sinks, recent);
    const want = directLoss(c, weights.layers[l].wo, [heads], r.alpha[l], lambda);
    assert.ok(Math.abs(r.loss[l] - want) < 1e-4 * Math.max(1, want), `layer ${l}: ${r.loss[l]} vs ${want}`);
    // the distortion alone (λ = 0) at gates away from the optimum: the statistics are this layer's
    const alpha = r.alpha[l].map((_, k) => 0.2 + 0.5 * k);
    const dist = gateLoss(r.stats[l], alpha, 0).loss;
    const wantDist = directLoss(c, weights.layers[l].wo, [heads], alpha, 0);
    assert.ok(Math.abs(dist - wantDist) < 1e-3 * wantDist, `layer ${l} distortion: ${dist} vs ${wantDist}`);
    assert.ok(r.alpha[l].some((a) => a > 0 && a < 1), `an interior gate: ${r.alpha[l]}`);
  }
});

Deno.test("duo gates: projected gradient descent meets the box's optimality conditions and beats random points", () => {
  // a random positive semi-definite G with correlated heads, and the tiny model's own statistics
  const K = 4;
  const r = uniform(9);
  const A = normals(r, K * 6);
  const gram = new Float64Array(K * K);
  for (let i = 0; i < K; i++) {
    for (let j = 0; j < K; j++) for (let t = 0; t < 6; t++) gram[i * K + j] += A[i * 6 + t] * A[j * 6 + t];
  }
  const cases: [GateStats, number][] = [
    [{ gram, energy: 8, positions: 6 }, 0.5],
    [{ gram, energy: 8, positions: 6 }, 3],
    [layerData(0, 2, 6).stats, 0.02],
  ];
  for (const [stats, lambda] of cases) {
    const fit = trainGates(stats, lambda, 20000, 1e-13);
    const { grad } = gateLoss(stats, fit.alpha, lambda);
    assert.ok(fit.alpha.every((a) => a >= 0 && a <= 1), `α in the box: ${fit.alpha}`);
    fit.alpha.forEach((a, k) => {
      if (a <= 0) assert.ok(grad[k] >= -1e-6, `α=0 needs ∂L/∂α ≥ 0: ${grad[k]}`);
      else if (a >= 1) assert.ok(grad[k] <= 1e-6, `α=1 needs ∂L/∂α ≤ 0: ${grad[k]}`);
      else assert.ok(Math.abs(grad[k]) < 1e-5, `interior α needs ∂L/∂α = 0: ${grad[k]}`);
    });
    const n = fit.alpha.length;
    for (let t = 0; t < 300; t++) {
      const x = Array.from({ length: n }, () => (r() < 0.3 ? Math.round(r()) : r()));
      assert.ok(fit.loss <= gateLoss(stats, x, lambda).loss + 1e-9);
    }
  }
});

/**
 * Random tokens with a needle (a 4-token key, then a 3-token answer) at `depth`,
 * ending with the key again: the answer is the 3 tokens after the key.
 */
function planted(vocab: number, length: number, depth: number, seed: number): Sample {
  const r = uniform(seed);
  const token = () => 3 + Math.floor(r() * (vocab - 3));
  const key = [token(), token(), token(), token()];
  const answer = [token(), token(), token()];
  const hay = Array.from({ length: length - 2 * key.length - 2 * answer.length }, token);
  const at = Math.round(depth * hay.length);
  const prompt = [...hay.slice(0, at), ...key, ...answer, ...hay.slice(at), ...key];
  return { ids: [...prompt, ...answer], answerStart: prompt.length, kind: "needle" };
}

Deno.test("duo gates on the retrieval model: the copy head is the retrieval head, and its mask keeps the answer", () => {
  // the constructed weights in memory over 512 token ids (no checkpoint written, no tokenizer learned)
  const cfg = parseConfig(retrievalConfig(512, null, null));
  const byName = retrievalWeights(cfg);
  const t = (name: string) => byName.get(name)!.data;
  const w: Weights = {
    embed: t("model.embed_tokens.weight"),
    norm: t("model.norm.weight"),
    lmHead: t("lm_head.weight"),
    layers: Array.from({ length: cfg.layers }, (_, l) =>
      Object.fromEntries(
        Object.entries(layerTensorNames(l)).filter(([, n]) => byName.has(n)).map(([k, n]) => [k, t(n)]),
      ) as unknown as LayerWeights),
  };
  const [sinks, recent] = [4, 32];
  const r = trainDuo(cfg, w, [1, 2].map((seed) => planted(cfg.vocab, 256, 0.5, seed)), {
    sinks,
    recent,
    chunk: 128,
    lambda: 0.05,
    steps: 2000,
  });
  // layer 0's heads read 1…6 tokens back (inside any recent window); layer 1's copy head reads the needle
  assert.ok(r.alpha[1][0] > 0.9 && r.alpha[0][0] < 0.1, `α ${JSON.stringify(r.alpha)}`);
  const tsv = r.alpha.map((row) => row.join("\t")).join("\n");
  const mask = parseDuoMask(tsv, cfg.layers, cfg.kvHeads, { sparsity: 0.5 });
  assert.deepEqual(mask.retrieval, [[false], [true]]);
  // end to end, teacher-forced through the reference forward: stream the heads the mask calls streaming
  const s = planted(cfg.vocab, 300, 0.4, 3);
  const qStart = s.answerStart - 1;
  const past = prefill(cfg, w, s.ids, qStart, 128);
  const window = s.ids.slice(qStart, s.ids.length - 1);
  const answer = s.ids.slice(s.answerStart);
  const greedy = (cache: Past) => {
    const logits = step(cfg, w, window, qStart, cache, true).logits;
    return answer.map((_, i) => {
      const row = logits.subarray(i * cfg.vocab, (i + 1) * cfg.vocab);
      return row.indexOf(Math.max(...row));
    });
  };
  assert.deepEqual(greedy(past), answer, "full attention answers");
  assert.deepEqual(greedy(streamingHead(cfg, past, 0, 0, sinks, recent)), answer, "the trained mask answers");
  assert.notDeepEqual(greedy(streamingHead(cfg, past, 1, 0, sinks, recent)), answer, "the other mask does not");
});

Deno.test("tome train duo: a bad --method or --lambda is one usage line, exit 2, before the model loads", async () => {
  const out = join(root, "mask.tsv");
  const m = await tome(["train", "duo", "-m", tiny, "--out", out, "--method", "heuristic"]);
  assert.equal(m.code, 2);
  assert.equal(m.stderr, "tome: --method must be gates or ablate, got heuristic\n");
  const l = await tome(["train", "duo", "-m", tiny, "--out", out, "--lambda", "-1"]);
  assert.equal(l.code, 2);
  assert.match(l.stderr, /^tome: --lambda must be a number in \[0, 1000000\], got -1\n$/);
});
