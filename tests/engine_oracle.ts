/**
 * A brute-force oracle for chunked prefill with eviction, independent of the
 * engine: the reference forward pass, statistics summed by brute force from its
 * probabilities, each policy's score written again from its paper, and a full
 * sort for selection. It returns which original positions every layer and KV
 * head keeps.
 */
import type { ModelConfig } from "../core/model/config.ts";
import { forward, type Past, type Weights } from "../core/model/reference.ts";
import { bruteForceStats } from "./model_fixtures.ts";
import { type KvPrediction, predictKv } from "../core/engine/estimate.ts";
import { patchTokens } from "../core/engine/resolve.ts";
import type { LoadedModel, ReadState } from "../core/mod.ts";
import { KVZIP_PROMPT } from "../core/policies/kvzip.ts";

interface Entry {
  pos: number;
  key: Float32Array;
  value: Float32Array;
  acc: number;
  seen: number;
  imp: number;
}

/** Locret's retaining head by plain loops: W₂·SiLU(W₁·x + b₁) + b₂. */
function retainScore(x: number[], r: NonNullable<OracleOptions["retaining"]>[number], kv: number): number {
  const F = x.length;
  let out = r.b2[kv];
  for (let j = 0; j < r.hidden; j++) {
    let a = r.b1[j];
    for (let i = 0; i < F; i++) a += r.w1[j * F + i] * x[i];
    out += r.w2[kv * r.hidden + j] * (a / (1 + Math.exp(-a)));
  }
  return out;
}

export interface OracleOptions {
  policy: string;
  /** duo: [layer][head] retrieval heads. */
  retrieval?: boolean[][];
  /** locret: the retaining heads' weights per layer. */
  retaining?: { w1: Float32Array; b1: Float32Array; w2: Float32Array; b2: Float32Array; hidden: number }[];
  budget: number;
  chunk: number;
  question: number[];
  patch: boolean;
  window: number;
  /** kvzip: the reconstruction request; each chunk runs as [chunk, request, chunk]. */
  repeat?: number[];
}

/**
 * PyramidKV's schedule restated from the paper (arXiv 2406.02069, β = 20): the
 * first layer gets 2B − B/β, the last B/β, linear in between, so the mean is B;
 * floored, the shortfall to L·B handed out one entry per layer from the first.
 */
export function pyramidSchedule(B: number, L: number): number[] {
  if (L === 1) return [B];
  const first = 2 * B - B / 20, last = B / 20;
  const exact = Array.from({ length: L }, (_, l) => first + (last - first) * (l / (L - 1)));
  const out = exact.map((x) => Math.floor(x));
  const short = L * B - out.reduce((a, b) => a + b, 0);
  for (let i = 0; i < short; i++) out[i % L] += 1;
  return out.map((x) => Math.max(1, x));
}

export function oracleKept(c: ModelConfig, w: Weights, ids: number[], o: OracleOptions): number[][][] {
  const { layers: L, kvHeads: K, heads: H, headDim: d } = c;
  const budgets = o.policy === "pyramidkv" || o.policy.startsWith("pyramid:")
    ? pyramidSchedule(o.budget, L)
    : new Array(L).fill(o.budget);
  const base = o.policy.startsWith("pyramid:") ? o.policy.slice("pyramid:".length) : o.policy;
  const cache: Entry[][][] = Array.from({ length: L }, () => Array.from({ length: K }, () => []));
  for (let t0 = 0; t0 < ids.length; t0 += o.chunk) {
    const doc = ids.slice(t0, t0 + o.chunk);
    const cLen = doc.length;
    const run = o.repeat ? [...doc, ...o.repeat, ...doc] : o.patch ? [...doc, ...o.question] : doc;
    const S = run.length;
    const windowStart = o.patch || o.repeat ? cLen : cLen - Math.min(cLen, o.window);
    // the retained entries as the reference takes them: per layer [K, P, d], heads packed at the front
    const P = Math.max(0, ...cache.flat().map((e) => e.length));
    const past: Past = {
      length: P,
      lengths: cache.map((layer) => layer.map((h) => h.length)),
      layers: cache.map((layer) => {
        const keys = new Float32Array(K * P * d), values = new Float32Array(K * P * d);
        layer.forEach((h, kv) =>
          h.forEach((e, i) => {
            keys.set(e.key, (kv * P + i) * d);
            values.set(e.value, (kv * P + i) * d);
          })
        );
        return { keys, values };
      }),
    };
    const out = forward(c, w, run, run.map((_, i) => t0 + i), past);
    for (let l = 0; l < L; l++) {
      const T = P + S;
      const st = bruteForceStats(out.probs[l], H, K, S, T, windowStart);
      const candidates: Entry[][] = [];
      const stats: Record<string, number[][]> = { window: [], all: [], max: [], last: [] };
      for (let h = 0; h < K; h++) {
        const old = cache[l][h];
        const at = (i: number) => (i < old.length ? h * T + i : h * T + P + (i - old.length));
        const n = old.length + cLen;
        for (const name of Object.keys(stats)) {
          stats[name][h] = Array.from({ length: n }, (_, i) => st[name as keyof typeof st][at(i)]);
        }
        const proj = out.projections[l];
        const row = (a: Float32Array, j: number, width: number) => Array.from(a.subarray(j * width, (j + 1) * width));
        const fresh = Array.from({ length: cLen }, (_, j) => ({
          pos: t0 + j,
          key: out.newKeys[l].slice((h * S + j) * d, (h * S + j + 1) * d),
          value: out.newValues[l].slice((h * S + j) * d, (h * S + j + 1) * d),
          acc: 0,
          seen: 0,
          imp: o.retaining
            ? retainScore(
              [...row(proj.q, j, H * d), ...row(proj.k, j, K * d), ...row(proj.v, j, K * d)],
              o.retaining[l],
              h,
            )
            : 0,
        }));
        // KVzip: a new entry's score is the most attention any reconstruction query pays it, given once
        if (o.repeat) fresh.forEach((e, j) => (e.imp = stats.max[h][old.length + j]));
        const all = [...old.map((e) => ({ ...e })), ...fresh];
        all.forEach((e, i) => {
          e.acc += stats.all[h][i];
          e.seen += i < old.length ? S : S - (i - old.length);
        });
        candidates.push(all);
      }
      const B = budgets[l];
      const w = o.patch ? o.question.length : Math.min(cLen, o.window);
      let shared: number[] | null = null;
      for (let h = 0; h < K; h++) {
        const es = candidates[h];
        const n = es.length;
        let scores: number[];
        let sinks = 0, recent = 0;
        switch (base) {
          case "streaming":
            scores = new Array(n).fill(0);
            sinks = Math.min(4, B);
            recent = B - sinks;
            break;
          case "knorm":
            scores = es.map((e) => -Math.hypot(...e.key));
            recent = Math.min(64, B);
            break;
          case "snapkv":
          case "pyramidkv":
            scores = es.map((_, i) => Math.max(...stats.window[h].slice(Math.max(0, i - 3), i + 4)));
            recent = o.patch ? 0 : w;
            break;
          case "h2o":
            scores = es.map((e) => e.acc / e.seen);
            recent = Math.floor(B / 2);
            break;
          case "tova":
            scores = es.map((_, i) => stats.last.reduce((a, row) => a + row[i], 0) / K);
            break;
          case "corm":
            scores = stats.max[h];
            recent = o.patch ? 0 : w;
            break;
          case "locret":
            scores = es.map((e) => e.imp);
            recent = Math.min(64, B);
            break;
          case "ems": {
            // EMS (arXiv 2412.08521): ½ · H2O's score share + ½ · SnapKV's score share (window mass, max over ±3)
            const g = es.map((e) => e.acc / e.seen);
            const win = es.map((_, i) => Math.max(...stats.window[h].slice(Math.max(0, i - 3), i + 4)));
            const gs = g.reduce((a, b) => a + b, 0), ls = win.reduce((a, b) => a + b, 0);
            scores = es.map((_, i) => 0.5 * g[i] / gs + 0.5 * win[i] / ls);
            recent = o.patch ? 0 : w;
            break;
          }
          case "kvzip":
            scores = es.map((e) => e.imp);
            sinks = Math.min(4, B);
            break;
          case "duo":
            scores = new Array(n).fill(0);
            sinks = Math.min(64, B);
            recent = B - sinks;
            break;
          default:
            throw new Error(`no oracle for ${o.policy}`);
        }
        let keep: number[];
        if (n <= B || o.retrieval?.[l][h]) keep = es.map((_, i) => i);
        else if (shared && o.policy === "tova") keep = shared;
        else {
          const s = Math.min(sinks, B, n), r = Math.min(recent, B - s, n - s);
          const middle = Array.from({ length: n - s - r }, (_, i) => s + i)
            .sort((a, b) => scores[b] - scores[a] || b - a)
            .slice(0, B - s - r);
          keep = [
            ...Array.from({ length: s }, (_, i) => i),
            ...middle,
            ...Array.from({ length: r }, (_, i) => n - r + i),
          ]
            .sort((a, b) => a - b);
        }
        shared ??= keep;
        cache[l][h] = keep.map((i) => es[i]);
      }
    }
  }
  return cache.map((layer) => layer.map((h) => h.map((e) => e.pos)));
}

/** `tome estimate`'s replay (predictKv) of a read of `documentTokens` ids in f32 KV, then a suffix and `maxTokens`. */
export function predictRead(
  m: LoadedModel,
  state: ReadState,
  o: { prefixTokens: number; documentTokens: number; chunk: number; suffixTokens: number; maxTokens: number },
): KvPrediction {
  return predictKv({
    config: m.config,
    plan: state.run.plan,
    bytesPerElement: 4,
    ...o,
    patchTokens: patchTokens(state.run, o.suffixTokens, m.tokenizer.encode(KVZIP_PROMPT).length),
  });
}
