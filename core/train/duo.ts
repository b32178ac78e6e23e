/**
 * `tome train duo`: DuoAttention's head classification (Xiao et al., arXiv
 * 2410.10819), two ways. `trainDuo` (the default) trains the gates: α per KV
 * head mixing full and streaming attention, L1 penalty, layer by layer
 * (duo_gates.ts). `measureDuo` (`--method ablate`) measures instead: for each
 * KV head, how far the model's answer distribution moves when that head alone
 * turns streaming (keeps `sinks` first + `recent` last entries of the prompt)
 * while every other head keeps its full cache. The answer span is
 * teacher-forced after a full-attention prefill of the prompt; the distance is
 * the mean KL divergence of the next-token distributions over the answer's
 * queries. α per head is its mean distance over the samples, scaled to [0, 1]
 * by the largest. Either way the duo policy thresholds α (`--duo-sparsity`).
 */
import type { ModelConfig } from "../model/config.ts";
import { appendEntries, type Past, type Weights } from "../model/reference.ts";
import type { Tokenizer } from "../tokens/tokenizer.ts";
import { runSamples, type Sample } from "./samples.ts";
import { accumulate, emptyStats, gateDirections, type GateStats, headOutputs, trainGates } from "./duo_gates.ts";
import { prefill, step } from "./targets.ts";

export interface DuoTrainOptions {
  samples: number;
  length: number;
  chunk: number;
  seed: number;
  sinks: number;
  recent: number;
  corpus: string;
  data: string[];
}

/** Defaults: the duo policy's 64 sinks, a 256-entry recent window; λ = 0.05 as DuoAttention's (on its own scale). */
export const DUO_DEFAULTS = {
  samples: 8,
  length: 1024,
  chunk: 256,
  seed: 0,
  sinks: 64,
  recent: 256,
  lambda: 0.05,
  steps: 2000,
};

/** KL(p ‖ q) of each row's softmax, averaged over rows: logits [S, V]. */
export function meanKl(p: Float32Array, q: Float32Array, S: number, V: number): number {
  let total = 0;
  for (let s = 0; s < S; s++) {
    const lp = logSoftmax(p.subarray(s * V, (s + 1) * V));
    const lq = logSoftmax(q.subarray(s * V, (s + 1) * V));
    let kl = 0;
    for (let i = 0; i < V; i++) kl += Math.exp(lp[i]) * (lp[i] - lq[i]);
    total += Math.max(0, kl);
  }
  return total / Math.max(1, S);
}

function logSoftmax(x: Float32Array): Float64Array {
  let m = -Infinity;
  for (const v of x) if (v > m) m = v;
  let z = 0;
  for (const v of x) z += Math.exp(v - m);
  const lz = m + Math.log(z);
  return Float64Array.from(x, (v) => v - lz);
}

/** The cache with layer l's KV head h cut to its first `sinks` and last `recent` entries (moved to the front). */
export function streamingHead(c: ModelConfig, past: Past, l: number, h: number, sinks: number, recent: number): Past {
  const { kvHeads: K, headDim: d } = c;
  const P = past.length;
  const keep = [...Array(P).keys()].filter((t) => t < sinks || t >= P - recent);
  const cut = (a: Float32Array) => {
    const y = a.slice();
    keep.forEach((t, i) => y.set(a.subarray((h * P + t) * d, (h * P + t + 1) * d), (h * P + i) * d));
    return y;
  };
  const layers = past.layers.map((x, i) => (i === l ? { keys: cut(x.keys), values: cut(x.values) } : x));
  const lengths = Array.from(
    { length: c.layers },
    (_, i) => Array.from({ length: K }, (_, k) => (i === l && k === h ? keep.length : P)),
  );
  return { length: P, layers, lengths };
}

/** Per layer and KV head, the mean answer KL when that head alone is streaming; and α (scaled to [0, 1]). */
export function measureDuo(
  c: ModelConfig,
  w: Weights,
  tok: Tokenizer,
  o: DuoTrainOptions,
  progress?: (done: number, total: number) => void,
): { deviation: number[][]; alpha: number[][] } {
  const dev = Array.from({ length: c.layers }, () => new Array(c.kvHeads).fill(0));
  let done = 0;
  const gen = runSamples(c, tok, o);
  for (const s of gen) {
    const qStart = s.answerStart - 1;
    const past = prefill(c, w, s.ids, qStart, o.chunk);
    const window = s.ids.slice(qStart, s.ids.length - 1);
    const full = step(c, w, window, qStart, past, true).logits;
    for (let l = 0; l < c.layers; l++) {
      for (let h = 0; h < c.kvHeads; h++) {
        const cut = streamingHead(c, past, l, h, o.sinks, o.recent);
        dev[l][h] += meanKl(full, step(c, w, window, qStart, cut, true).logits, window.length, c.vocab) / o.samples;
      }
    }
    progress?.(++done, o.samples);
  }
  const top = Math.max(...dev.flat());
  return { deviation: dev, alpha: dev.map((r) => r.map((v) => (top > 0 ? v / top : 0))) };
}

/** The mask file the duo policy reads (parseDuoMask): α rows per layer, tab-separated, with a comment header. */
export function duoTsv(alpha: number[][], header: string[]): string {
  return [...header.map((h) => `# ${h}`), ...alpha.map((r) => r.map((v) => v.toFixed(6)).join("\t"))].join("\n") + "\n";
}

/**
 * Trains DuoAttention's gates (duo_gates.ts) on `data` (e.g. `samples()`,
 * consumed one at a time): per sample, a full-attention
 * prefill of the prompt, then the window of queries that predict the answer
 * (the last prompt token's and the answer's, teacher-forced); per layer, the
 * window's full and streaming head outputs add to that layer's G and E; then
 * projected gradient descent per layer. Returns α per layer and head, each
 * head's relative cost of streaming alone (G_kk / E), and each layer's loss.
 */
export function trainDuo(
  c: ModelConfig,
  w: Weights,
  data: Iterable<Sample>,
  o: { sinks: number; recent: number; chunk: number; lambda: number; steps: number },
  progress?: (done: number) => void,
): { alpha: number[][]; cost: number[][]; loss: number[]; stats: GateStats[] } {
  const { kvHeads: K, headDim: d, hidden: D } = c;
  const stats = Array.from({ length: c.layers }, () => emptyStats(K));
  let done = 0;
  for (const s of data) {
    const qStart = s.answerStart - 1;
    const past = prefill(c, w, s.ids, qStart, o.chunk);
    const window = s.ids.slice(qStart, s.ids.length - 1);
    const S = window.length, P = past.length;
    const out = step(c, w, window, qStart, past);
    for (let l = 0; l < c.layers; l++) {
      const keys = appendEntries(past.layers[l].keys, P, out.newKeys[l], S, K, d);
      const values = appendEntries(past.layers[l].values, P, out.newValues[l], S, K, d);
      const heads = headOutputs(c, { q: out.queries[l], keys, values, S, P }, o.sinks, o.recent);
      const { u, y } = gateDirections(c, w.layers[l].wo, heads, S);
      accumulate(stats[l], u, y, K, S, D);
    }
    progress?.(++done);
  }
  const fits = stats.map((st) => trainGates(st, o.lambda, o.steps));
  const cost = stats.map((st) =>
    Array.from({ length: K }, (_, k) => st.gram[k * K + k] / (st.energy > 0 ? st.energy : 1))
  );
  return { alpha: fits.map((f) => f.alpha), cost, loss: fits.map((f) => f.loss), stats };
}
