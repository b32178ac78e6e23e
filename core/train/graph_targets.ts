/**
 * Locret's features and CIS targets (see targets.ts) from the ONNX graph
 * through onnxruntime instead of the reference forward, so that training runs
 * on models of any size: a feature graph (`GraphOptions.features`) returns
 * each new token's [q; k; v] and, for the window queries, the group max of
 * their attention. The prompt is prefilled in chunks over a growing cache
 * (nothing evicted); the answer span, from the last prompt token on, is the
 * final chunk with the window starting at its first query, so the group max
 * over the past block is the CIS of every prompt token.
 */
import { graphFor } from "../model/cache.ts";
import type { Checkpoint } from "../model/checkpoint.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../model/onnx/decoder.ts";
import { featureIo } from "../model/onnx/features.ts";
import { appendEntries } from "../model/reference.ts";
import { emptyPast, ModelSession, type PastKv } from "../model/session.ts";
import type { Sample } from "./samples.ts";
import { featureWidth, type Targets } from "./targets.ts";

/** The graph options of a feature graph: float32 weights and cache, original positions. */
export const FEATURE_GRAPH: GraphOptions = { ...DEFAULT_GRAPH_OPTIONS, features: true };

/** Builds (or finds in the cache) the checkpoint's feature graph and opens it on the CPU. */
export async function openFeatureSession(ckpt: Checkpoint, threads?: number): Promise<ModelSession> {
  const cached = await graphFor(ckpt, FEATURE_GRAPH);
  return await ModelSession.open(ckpt.config, FEATURE_GRAPH, cached.path, { threads });
}

/** Features and CIS targets of one sample's prompt tokens 0 … answerStart−2, from a feature session. */
export async function graphSampleTargets(session: ModelSession, sample: Sample, chunk: number): Promise<Targets> {
  const c = session.config;
  const { kvHeads: K, headDim: d, layers } = c;
  const F = featureWidth(c);
  const N = sample.answerStart - 1; // the window: the last prompt token's query and the answer's
  const features = Array.from({ length: layers }, () => new Float32Array(N * F));
  const qkvNames = Array.from({ length: layers }, (_, l) => featureIo.qkv(l));
  let past: PastKv = emptyPast(c, "float32");
  let P = 0;
  for (let s = 0; s < N; s += chunk) {
    const S = Math.min(chunk, N - s);
    const out = await session.run({
      ids: sample.ids.slice(s, s + S),
      positions: Array.from({ length: S }, (_, i) => s + i),
      past,
      fetch: { logits: false, kv: true, outputs: qkvNames },
    });
    for (let l = 0; l < layers; l++) features[l].set(out.outputs![qkvNames[l]], s * F);
    const grow = (old: PastKv["keys"], fresh: PastKv["keys"]) =>
      fresh.map((f, l) => appendEntries(old[l] as Float32Array, P, f as Float32Array, S, K, d));
    past = { keys: grow(past.keys, out.newKeys), values: grow(past.values, out.newValues), lengths: [] };
    P += S;
    past.lengths = new Array(layers * K).fill(P);
  }
  return { N, features, cis: await windowCis(session, sample, past, N) };
}

/** The answer span as the final chunk: per layer [N, Hkv], the group max over its queries of prompt token t. */
async function windowCis(session: ModelSession, sample: Sample, past: PastKv, N: number): Promise<Float32Array[]> {
  const { kvHeads: K, layers } = session.config;
  const window = sample.ids.slice(N, sample.ids.length - 1); // queries that predict answer tokens
  const names = Array.from({ length: layers }, (_, l) => featureIo.groupMax(l));
  const out = await session.run({
    ids: window,
    positions: window.map((_, i) => N + i),
    past,
    windowStart: 0,
    fetch: { logits: false, kv: false, outputs: names },
  });
  const T = N + window.length;
  return names.map((n) => {
    const m = out.outputs![n]; // [K, T]
    const y = new Float32Array(N * K);
    for (let k = 0; k < K; k++) for (let t = 0; t < N; t++) y[t * K + k] = m[k * T + t];
    return y;
  });
}
