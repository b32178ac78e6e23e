/**
 * ThinK's query factor (arXiv 2407.21018) against restatements written here:
 * the graph's `query_energy_L` equals Σ q² over the window queries and each KV
 * head's group, from the reference forward's queries (rotated in original
 * mode; unrotated — the projections through the q norm — in compact mode,
 * where the cache keeps unrotated keys); `chooseChannels` equals the top
 * channels by the Frobenius norm of the explicit outer product Q_win[:, i]·K[:, i]ᵀ
 * on random data; a thin-key run's kept channels equal that brute-force
 * choice from the reference's queries and keys over the same cache.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { KvStore } from "../core/engine/kv_store.ts";
import { planBudgets } from "../core/engine/plan.ts";
import { Sequence } from "../core/engine/sequence.ts";
import { allocThinKeys, chooseChannels, type KeyChannels } from "../core/engine/thin_keys.ts";
import { Meter } from "../core/meter/meter.ts";
import { type LoadedModel, loadModel } from "../core/mod.ts";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { kvBytesPerToken, type PositionMode } from "../core/model/config.ts";
import { DEFAULT_GRAPH_OPTIONS } from "../core/model/onnx/decoder.ts";
import { forward, loadWeights, type Past, rmsnorm, type Weights } from "../core/model/reference.ts";
import { ModelSession } from "../core/model/session.ts";
import { makePolicy } from "../core/policies/mod.ts";
import { f32ToF16, fromF16Bits } from "../kernels/fp16.ts";
import { rng } from "./helpers.ts";
import { makeTinyModels } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-think-query-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));

/**
 * The reference's queries [S, H, d] in the cached keys' frame: rotated in original mode; in compact mode the
 * projections through the (Qwen3) q norm, before RoPE.
 */
function framedQueries(
  w: Weights,
  out: ReturnType<typeof forward>,
  l: number,
  mode: PositionMode,
  S: number,
  H: number,
  d: number,
  eps: number,
): Float32Array {
  if (mode === "original") return out.queries[l];
  const q = out.projections[l].q;
  const qNorm = w.layers[l].qNorm;
  return qNorm ? rmsnorm(q, qNorm, S * H, d, eps) : q;
}

/** Brute force: Σ over window rows s ≥ ws and the query heads a of KV head h of q[s, a, i]², [K, d]. */
function bruteQueryEnergy(q: Float32Array, S: number, H: number, K: number, d: number, ws: number): Float64Array {
  const g = H / K, out = new Float64Array(K * d);
  for (let s = ws; s < S; s++) {
    for (let a = 0; a < H; a++) {
      for (let i = 0; i < d; i++) out[Math.floor(a / g) * d + i] += q[(s * H + a) * d + i] ** 2;
    }
  }
  return out;
}

/**
 * Brute force of ThinK's channel choice for one head: channel i scores the Frobenius norm of the explicit outer
 * product M[a, t] = Q[a, i]·K[t, i] (Q: window query rows [n, d], K: candidate keys [m, d]); the k best, ties to
 * the lower index, ascending.
 */
function bruteChannels(Q: number[][], keys: number[][], d: number, k: number): number[] {
  const score = Array.from({ length: d }, (_, i) => {
    let f = 0;
    for (const qa of Q) for (const kt of keys) f += (qa[i] * kt[i]) ** 2;
    return Math.sqrt(f);
  });
  const order = [...score.keys()].sort((a, b) => (score[b] !== score[a] ? score[b] - score[a] : a - b));
  return order.slice(0, k).sort((a, b) => a - b);
}

/** The keys-only choice (ThinK's key-magnitude ablation): what the test must tell apart from the query-aware one. */
function keyOnlyChannels(keys: number[][], d: number, k: number): number[] {
  return bruteChannels([Array(d).fill(1)], keys, d, k);
}

Deno.test("query energy: the graph's output equals Σ q² over the window from the reference forward's queries", async (t) => {
  for (const name of ["llama", "qwen3"]) {
    for (const mode of ["original", "compact"] as const) {
      await t.step(`${name}, ${mode}`, async () => {
        const ckpt = await openCheckpoint(models.get(name)!);
        const c = ckpt.config;
        const { layers: L, heads: H, kvHeads: K, headDim: d } = c;
        const w = await loadWeights(ckpt);
        const opts = { ...DEFAULT_GRAPH_OPTIONS, positions: mode, queryEnergy: true as const };
        const session = await ModelSession.open(c, opts, (await graphFor(ckpt, opts)).path);
        try {
          // a cache of P random entries with ragged lengths, then S new tokens after it
          const P = 6, S = 9;
          const r = rng(name.length * 31 + (mode === "compact" ? 7 : 0));
          const lengths = Array.from({ length: L }, (_, l) => Array.from({ length: K }, (_, h) => P - ((l + h) % 3)));
          const layers = Array.from({ length: L }, () => ({
            keys: Float32Array.from({ length: K * P * d }, () => r() * 2 - 1),
            values: Float32Array.from({ length: K * P * d }, () => r() * 2 - 1),
          }));
          const past: Past = { length: P, layers, lengths, positions: Array.from({ length: P }, (_, p) => p) };
          const ids = Array.from({ length: S }, () => 4 + Math.floor(r() * 300));
          const positions = Array.from({ length: S }, (_, s) => P + 3 + s);
          const ref = forward(c, w, ids, positions, past, mode);
          for (const ws of [S - 1, S - 4, 0]) {
            const got = await session.run({
              ids,
              positions,
              past: { keys: layers.map((x) => x.keys), values: layers.map((x) => x.values), lengths: lengths.flat() },
              windowStart: ws,
              fetch: { logits: false, kv: false, queryEnergy: true },
            });
            for (let l = 0; l < L; l++) {
              const q = framedQueries(w, ref, l, mode, S, H, d, c.rmsEps);
              const want = bruteQueryEnergy(q, S, H, K, d, ws);
              const e = got.queryEnergy![l];
              assert.equal(e.length, K * d);
              for (let i = 0; i < K * d; i++) {
                assert.ok(
                  Math.abs(e[i] - want[i]) <= 1e-4 * want[i],
                  `layer ${l} [${Math.floor(i / d)}, ${i % d}] window from ${ws}: ${e[i]} vs ${want[i]}`,
                );
              }
            }
          }
        } finally {
          await session.close();
        }
      });
    }
  }
});

Deno.test("chooseChannels equals the top ‖Q_win[:, i]·K[:, i]ᵀ‖_F of the explicit outer product (random data)", async (t) => {
  const K = 3, d = 16;
  for (const f16 of [false, true]) {
    await t.step(f16 ? "f16 keys" : "f32 keys", () => {
      let differsFromKeyOnly = 0;
      for (let trial = 0; trial < 20; trial++) {
        const r = rng(100 + trial);
        const k = 1 + (trial % (d - 1));
        const retained = Array.from({ length: K }, () => Math.floor(r() * 7));
        const freshCount = 1 + Math.floor(r() * 6), stride = freshCount + Math.floor(r() * 3);
        const windowRows = 1 + Math.floor(r() * 8);
        // channel scales differ between queries and keys so the query factor changes the ranking
        const qScale = Array.from({ length: d }, () => 0.1 + 3 * r() ** 2);
        const kScale = Array.from({ length: d }, () => 0.1 + 3 * r() ** 2);
        const row = (scale: number[]) => scale.map((s) => (r() * 2 - 1) * s);
        const store = (x: number[]) => (f16 ? Array.from(f32ToF16(Float32Array.from(x))) : x);
        const value = (x: number) => (f16 ? fromF16Bits(x) : x);
        const fullCap = Math.max(...retained);
        const thin = allocThinKeys(!f16, K, d, k, fullCap, fullCap);
        const freshKeys = f16 ? new Uint16Array(K * stride * d) : new Float32Array(K * stride * d);
        const candidates: number[][][] = [], queries: number[][][] = [];
        const energy = new Float32Array(K * d);
        for (let h = 0; h < K; h++) {
          const cs: number[][] = [];
          for (let j = 0; j < retained[h]; j++) {
            const x = store(row(kScale));
            thin.full.set(x, (h * fullCap + j) * d);
            cs.push(x.map(value));
          }
          for (let j = 0; j < stride; j++) {
            const x = store(row(kScale));
            freshKeys.set(x, (h * stride + j) * d);
            if (j < freshCount) cs.push(x.map(value)); // rows past freshCount (a patch) are not candidates
          }
          candidates.push(cs);
          queries.push(Array.from({ length: windowRows }, () => row(qScale)));
          for (const q of queries[h]) for (let i = 0; i < d; i++) energy[h * d + i] += q[i] * q[i];
        }
        const got = chooseChannels(
          thin,
          retained,
          { keys: freshKeys, values: freshKeys, stride },
          freshCount,
          d,
          k,
          energy,
        );
        for (let h = 0; h < K; h++) {
          const want = bruteChannels(queries[h], candidates[h], d, k);
          assert.deepEqual([...got.subarray(h * k, (h + 1) * k)], want, `trial ${trial} head ${h} (k = ${k})`);
          if (want.join() !== keyOnlyChannels(candidates[h], d, k).join()) differsFromKeyOnly++;
        }
      }
      assert.ok(differsFromKeyOnly > 10, `the query factor changed only ${differsFromKeyOnly} choices`);
    });
  }
});

/** The reference's past for a store's cache (every key whole: before a layer's first pruning). */
function pastOf(seq: Sequence, d: number): Past {
  const p = seq.store.past();
  const caps = seq.store.layers.map((c) => c.capacity);
  const P = Math.max(...caps);
  const K = seq.store.config.kvHeads;
  const layers = p.keys.map((keys, l) => {
    const out = { keys: new Float32Array(K * P * d), values: new Float32Array(K * P * d) };
    for (let h = 0; h < K; h++) {
      out.keys.set(keys.subarray(h * caps[l] * d, (h + 1) * caps[l] * d), h * P * d);
      out.values.set(p.values[l].subarray(h * caps[l] * d, (h + 1) * caps[l] * d), h * P * d);
    }
    return out;
  });
  return {
    length: P,
    layers,
    lengths: seq.store.layers.map((c) => Array.from(c.lengths)),
    positions: Array.from({ length: P }, (_, i) => i), // compact mode rotates a cached key to its slot
  };
}

Deno.test("a thin-key run keeps the channels the brute-force choice takes from the reference's queries and keys", async (t) => {
  const cases: { name: string; mode: PositionMode; patch: number[] }[] = [
    { name: "llama", mode: "original", patch: [] },
    { name: "llama", mode: "original", patch: [11, 12, 13] },
    { name: "qwen3", mode: "compact", patch: [] },
    { name: "qwen3", mode: "compact", patch: [21, 22] },
  ];
  for (const tc of cases) {
    await t.step(`${tc.name}, ${tc.mode}, ${tc.patch.length ? "a question patch" : "no patch"}`, async () => {
      const model: LoadedModel = await loadModel(models.get(tc.name)!, {
        positions: tc.mode,
        kvDtype: "float32",
        queryEnergy: true,
      });
      try {
        const { config } = model;
        const { layers: L, heads: H, kvHeads: K, headDim: d } = config;
        const w = await loadWeights(model.checkpoint);
        const kc: KeyChannels = { channels: 5, window: 4 };
        const policy = await makePolicy("snapkv", config);
        const plan = planBudgets(policy, config, { budget: 10, keyChannels: kc });
        const seq = new Sequence(
          model.session,
          new KvStore(config, "float32", kc),
          new Meter(kvBytesPerToken(config, 4)),
        );
        const r = rng(tc.name.length + tc.patch.length);
        const chosen = new Array<boolean>(L).fill(false);
        const chunk = 6;
        for (let step = 0; step < 4 && chosen.some((x) => !x); step++) {
          const ids = Array.from({ length: chunk }, () => 4 + Math.floor(r() * 300));
          const run = [...ids, ...tc.patch];
          const S = run.length;
          const windowQueries = tc.patch.length || Math.min(chunk, kc.window);
          const past = pastOf(seq, d);
          const before = seq.store.layers.map((c) => c.thinKeys!.channels);
          const ref = forward(config, w, run, seq.nextPositions(S), past, tc.mode);
          await seq.step(ids, plan.prefill, { window: kc.window, patch: tc.patch });
          for (let l = 0; l < L; l++) {
            const channels = seq.store.layers[l].thinKeys!.channels;
            if (before[l] || !channels) continue;
            chosen[l] = true;
            const q = framedQueries(w, ref, l, tc.mode, S, H, d, config.rmsEps);
            for (let h = 0; h < K; h++) {
              // the window queries of the group, and the candidates: the head's cache, then the chunk's new keys
              const Q: number[][] = [];
              for (let s = S - windowQueries; s < S; s++) {
                for (let a = h * (H / K); a < (h + 1) * (H / K); a++) {
                  Q.push(Array.from(q.subarray((s * H + a) * d, (s * H + a + 1) * d)));
                }
              }
              const keys: number[][] = [];
              for (let j = 0; j < past.lengths![l][h]; j++) {
                keys.push(
                  Array.from(past.layers[l].keys.subarray((h * past.length + j) * d, (h * past.length + j + 1) * d)),
                );
              }
              const fresh = ref.newKeys[l];
              for (let j = 0; j < chunk; j++) {
                keys.push(Array.from(fresh.subarray((h * S + j) * d, (h * S + j + 1) * d)));
              }
              assert.deepEqual(
                [...channels.subarray(h * kc.channels, (h + 1) * kc.channels)],
                bruteChannels(Q, keys, d, kc.channels),
                `step ${step} layer ${l} head ${h}`,
              );
            }
          }
        }
        assert.ok(chosen.every((x) => x), "every layer pruned");
      } finally {
        await model.session.close();
      }
    });
  }
});
