/**
 * `tome train locret`: trains Locret's retaining heads (Huang et al., arXiv
 * 2410.01805) on the frozen model. Per layer an MLP over each token's
 * [q; k; v] learns the token's causal importance score (see targets.ts) with
 * SmoothL1 + 0.0025 · adjacent-token MSE, AdamW (β 0.9/0.95, linear warmup,
 * cosine decay, global-norm clip 0.5). Inputs are standardized while training
 * and the standardization is folded into fc1 on export, so the file computes
 * exactly what retaining.ts builds into the graph from raw projections.
 */
import { adamState, adamwStep, clipGradNorm, type Mlp, mlpBackward, mlpForward, zeroMlp } from "../../kernels/mlp.ts";
import { normals, seedFor, uniform } from "../../kernels/random.ts";
import type { ModelConfig } from "../model/config.ts";
import { retainingNames } from "../model/onnx/retaining.ts";
import type { Weights } from "../model/reference.ts";
import { type TensorToWrite, writeSafetensors } from "../model/safetensors.ts";
import type { Tokenizer } from "../tokens/tokenizer.ts";
import { locretLoss } from "./loss.ts";
import { addSegments, emptyPools, featureStats, type LayerPool, poolCapacity, segmentStarts } from "./pool.ts";
import { runSamples, type Sample } from "./samples.ts";
import { featureWidth, sampleTargets, type Targets } from "./targets.ts";

export interface LocretTrainOptions {
  hidden: number;
  steps: number;
  lr: number;
  seed: number;
  /** Samples made (each one reference prefill of `length` tokens). */
  samples: number;
  length: number;
  chunk: number;
  /** Tokens per segment and segments per step. */
  segment: number;
  segmentsPerStep: number;
  warmup: number;
  weightDecay: number;
  clip: number;
  /** Bytes all layers' segment pools may hold together (`pool.ts`). */
  poolBytes: number;
  corpus: string;
  data: string[];
}

/** Defaults of the recipe (the paper's lr, betas and clip; sizes for a CPU). */
export const LOCRET_DEFAULTS = {
  hidden: 1024,
  steps: 300,
  lr: 5e-4,
  seed: 0,
  samples: 24,
  length: 1024,
  chunk: 256,
  segment: 32,
  segmentsPerStep: 4,
  warmup: 30,
  weightDecay: 0.01,
  clip: 0.5,
  poolBytes: 512 * 2 ** 20,
};

/** Where a sample's features and CIS come from: the reference forward (`targets.ts`) or a feature graph. */
export type TargetSource = (s: Sample, chunk: number) => Targets | Promise<Targets>;

/** The reference forward as a target source (small models). */
export const referenceTargets = (c: ModelConfig, w: Weights): TargetSource => (s, chunk) =>
  sampleTargets(c, w, s, chunk);

/** What the trainer reports as it goes. */
export type TrainProgress =
  | { phase: "data"; done: number; total: number }
  | { phase: "train"; done: number; total: number; loss: number };

/** A trained head per layer, in raw-feature space (what the safetensors file holds). */
export interface TrainedHeads {
  heads: Mlp[];
  /** Mean training loss of the first and the last tenth of the steps. */
  firstLoss: number;
  lastLoss: number;
  tokens: number;
}

/** Fresh head parameters: fc1 N(0, 1/F), fc2 N(0, 1/hidden), biases 0. */
export function initHead(F: number, hidden: number, K: number, seed: number, l: number): Mlp {
  const p = zeroMlp(F, hidden, K);
  p.w1.set(normals(uniform(seedFor(seed, `w1.${l}`)), hidden * F, 1 / Math.sqrt(F)));
  p.w2.set(normals(uniform(seedFor(seed, `w2.${l}`)), K * hidden, 1 / Math.sqrt(hidden)));
  return p;
}

/** Folds x̂ = (x − μ)/σ into fc1: W₁' = W₁/σ, b₁' = b₁ − W₁'·μ. */
export function foldStandardization(p: Mlp, mean: Float32Array, std: Float32Array): Mlp {
  const F = mean.length;
  const hidden = p.b1.length;
  const w1 = new Float32Array(p.w1.length);
  const b1 = p.b1.slice();
  for (let j = 0; j < hidden; j++) {
    for (let i = 0; i < F; i++) {
      w1[j * F + i] = p.w1[j * F + i] / std[i];
      b1[j] -= w1[j * F + i] * mean[i];
    }
  }
  return { w1, b1, w2: p.w2.slice(), b2: p.b2.slice() };
}

/** The learning rate at step t (0-based): linear warmup, then cosine decay to a tenth. */
export function learningRate(t: number, o: Pick<LocretTrainOptions, "lr" | "warmup" | "steps">): number {
  if (t < o.warmup) return o.lr * (t + 1) / o.warmup;
  const f = (t - o.warmup) / Math.max(1, o.steps - o.warmup);
  return o.lr * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * f)));
}

/** Builds the segment pools from `o.samples` samples, made and scored one at a time (bounded memory). */
export async function buildPools(
  c: ModelConfig,
  targets: TargetSource,
  tok: Tokenizer,
  o: LocretTrainOptions,
  progress?: (p: TrainProgress) => void,
): Promise<LayerPool[]> {
  const F = featureWidth(c);
  const K = c.kvHeads;
  const pools = emptyPools(c.layers);
  const capacity = poolCapacity(o, c.layers, F, K);
  const rnd = uniform(seedFor(o.seed, "segments"));
  let done = 0;
  for (const s of runSamples(c, tok, o)) {
    const t = await targets(s, o.chunk);
    addSegments(pools, t, segmentStarts(t, K, o.segment, 2, 4, rnd), o.segment, F, K, capacity, rnd);
    progress?.({ phase: "data", done: ++done, total: o.samples });
  }
  return pools;
}

/** Trains one head per layer on the pools; returns them in raw-feature space. */
export function trainHeads(
  c: ModelConfig,
  pools: LayerPool[],
  o: LocretTrainOptions,
  progress?: (p: TrainProgress) => void,
): TrainedHeads {
  const F = featureWidth(c);
  const K = c.kvHeads;
  const seg = o.segment;
  const rnd = uniform(seedFor(o.seed, "batches"));
  const stats = pools.map((p) => featureStats(p, F));
  const heads = pools.map((_, l) => initHead(F, o.hidden, K, o.seed, l));
  const adam = heads.map(adamState);
  const losses: number[] = [];
  const per = Math.max(1, o.segmentsPerStep);
  for (let t = 0; t < o.steps; t++) {
    let total = 0;
    for (let l = 0; l < pools.length; l++) {
      const pool = pools[l];
      if (pool.x.length === 0) continue;
      const N = per * seg;
      const x = new Float32Array(N * F);
      const y = new Float32Array(N * K);
      for (let b = 0; b < per; b++) {
        const i = Math.floor(rnd() * pool.x.length);
        const src = pool.x[i];
        const { mean, std } = stats[l];
        for (let r = 0; r < seg; r++) {
          for (let f = 0; f < F; f++) x[(b * seg + r) * F + f] = (src[r * F + f] - mean[f]) / std[f];
        }
        y.set(pool.y[i], b * seg * K);
      }
      const tape = mlpForward(heads[l], x, N, F);
      const { loss, dr } = locretLoss(tape.r, y, N, K, seg);
      const grad = zeroMlp(F, o.hidden, K);
      mlpBackward(heads[l], x, N, F, tape, dr, grad);
      clipGradNorm(grad, o.clip);
      adamwStep(heads[l], grad, adam[l], {
        lr: learningRate(t, o),
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weightDecay: o.weightDecay,
      });
      total += loss;
    }
    losses.push(total / pools.length);
    progress?.({ phase: "train", done: t + 1, total: o.steps, loss: losses[t] });
  }
  const tenth = Math.max(1, Math.floor(losses.length / 10));
  const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / Math.max(1, a.length);
  return {
    heads: heads.map((h, l) => foldStandardization(h, stats[l].mean, stats[l].std)),
    firstLoss: mean(losses.slice(0, tenth)),
    lastLoss: mean(losses.slice(-tenth)),
    tokens: pools[0]?.x.length * seg,
  };
}

/** Writes the heads in the layout `--retaining-heads` reads (retaining.ts), metadata in `__metadata__`. */
export async function writeHeads(path: string, heads: Mlp[], metadata: Record<string, string>): Promise<void> {
  const tensors: TensorToWrite[] = [];
  heads.forEach((h, l) => {
    const n = retainingNames(l);
    const hidden = h.b1.length;
    tensors.push(
      { name: n.w1, shape: [hidden, h.w1.length / hidden], data: h.w1 },
      { name: n.b1, shape: [hidden], data: h.b1 },
      { name: n.w2, shape: [h.b2.length, hidden], data: h.w2 },
      { name: n.b2, shape: [h.b2.length], data: h.b2 },
    );
  });
  await writeSafetensors(path, tensors, "F32", { format: "tome-retaining-heads", ...metadata });
}
