/**
 * One layer's eviction after a run: every KV head's retained entries followed
 * by the run's new ones are scored by the policy and cut to the plan's count
 * by the one selection path, then (with a merger) dropped entries are folded
 * into kept ones, and the store compacts the survivors in place.
 */
import { fromF16Bits } from "../../kernels/fp16.ts";
import type { KvArray, RunResult, StatName } from "../model/session.ts";
import { type ScoreView, select } from "../policies/mod.ts";
import type { HeadUpdate, KvStore } from "./kv_store.ts";
import { mergeLayer, writeMerged } from "./merge_step.ts";
import { headKeys } from "./thin_keys.ts";
import type { EvictionRule } from "./plan.ts";
import { demoteLayer, lowCandidates } from "./demote.ts";
import type { LowStore } from "./low_store.ts";

export interface EvictStep {
  /** The run's result (new K/V, the statistics the policy needs, retaining-head scores). */
  result: RunResult;
  /** New entries that are candidates (the first `fresh` of the run's `runTokens`; the rest, a question patch, are dropped). */
  fresh: number;
  runTokens: number;
  /** Original positions of the `fresh` new entries. */
  positions: Int32Array;
  /** Observation-window queries of the run, and whether they are the question patch. */
  windowQueries: number;
  patch: boolean;
  rule: EvictionRule;
  /** MiKV's low tier: what the selection does not keep moves there instead of being dropped. */
  low?: LowStore;
}

/** Scores and selects layer `l`'s entries (retained ++ the step's fresh ones) down to the rule's counts. */
export async function evictLayer(store: KvStore, l: number, step: EvictStep): Promise<void> {
  const { kvHeads: K, headDim: d, layers: L } = store.config;
  const { result, fresh: c, runTokens: S, rule } = step;
  const { policy } = rule;
  const layer = store.layers[l];
  const cap = layer.capacity;
  const protect = rule.protect(l, step.windowQueries, step.patch);
  const newKeys = result.newKeys[l];
  const all = result.stats.all?.[l];
  const retain = result.retain?.[l];
  if (policy.retain && !retain) throw new Error(`policy ${policy.name} needs a graph with retaining heads`);
  // MiKV: the low tier's entries are candidates too (promotion), unless the policy keeps one selection for all
  // heads (their low tiers differ in length)
  const lowC = step.low && !policy.sharedAcrossHeads ? lowCandidates(store, step.low, l, result, c, S) : null;

  const views: ScoreView[] = [];
  const updates: HeadUpdate[] = [];
  for (let h = 0; h < K; h++) {
    const P = layer.lengths[h];
    // with promotion, the head's low entries sit between its retained and new ones: [P ; Q ; c]
    const Q = lowC?.count[h] ?? 0;
    const n = P + Q + c;
    const row = h * (cap + S);
    /** The head's n values of a statistic: retained slots, (low entries,) then the run's candidate entries. */
    const gather = (stat: Float32Array, name?: StatName) => {
      const out = new Float32Array(n);
      out.set(stat.subarray(row, row + P));
      if (Q > 0 && name) out.set(lowC!.stat(name, h), P);
      out.set(stat.subarray(row + cap, row + cap + c), P + Q);
      return out;
    };
    const positions = new Int32Array(n);
    positions.set(layer.positions.subarray(h * cap, h * cap + P));
    if (Q > 0) positions.set(lowC!.positions(h), P);
    positions.set(step.positions, P + Q);
    const accumulated = new Float32Array(n);
    const seen = new Float32Array(n);
    const importance = new Float32Array(n);
    importance.set(layer.importance.subarray(h * cap, h * cap + P));
    if (retain) importance.set(retain.subarray(h * S, h * S + c), P + Q);
    accumulated.set(layer.accumulated.subarray(h * cap, h * cap + P));
    seen.set(layer.seen.subarray(h * cap, h * cap + P));
    for (let i = 0; i < P; i++) seen[i] += S;
    // a low entry's mass and queries seen already count this run (`LowStore.accumulate`)
    if (Q > 0) seen.set(lowC!.seen(h), P);
    for (let j = 0; j < c; j++) seen[P + Q + j] = S - j;
    if (all) {
      const mass = gather(all);
      for (let i = 0; i < n; i++) accumulated[i] += mass[i];
    }
    if (Q > 0) accumulated.set(lowC!.accumulated(h), P);
    const cache = new Map<StatName, Float32Array>();
    const stat = (name: StatName) => {
      let v = cache.get(name);
      if (!v) {
        const s = result.stats[name]?.[l];
        if (!s) throw new Error(`policy ${policy.name} read statistic "${name}" it did not declare`);
        cache.set(name, v = gather(s, name));
      }
      return v;
    };
    views.push({
      layer: l,
      layers: L,
      head: h,
      kvHeads: K,
      n,
      past: P,
      positions,
      stat,
      layerStat: (name) => views.map((v) => v.stat(name)),
      accumulated,
      seen,
      importance,
      keyNorms: () =>
        layer.thinKeys
          ? keyNorms(headKeys(layer.thinKeys, h, P, d), 0, P, newKeys, h * S, c, d)
          : lowC
          ? lowKeyNorms(keyNorms(layer.keys, h * cap, P, newKeys, h * S, c, d), P, lowC.keys(h), d)
          : keyNorms(layer.keys, h * cap, P, newKeys, h * S, c, d),
      windowQueries: step.windowQueries,
    });
    updates.push({ keep: new Int32Array(0), positions, accumulated, seen, importance });
  }
  if (policy.arrive) { for (const v of views) policy.arrive(v); }
  const scores: Float32Array[] = [];
  for (let h = 0; h < K; h++) {
    const v = views[h];
    const keep = rule.keep(l, h);
    if (v.n <= keep) updates[h].keep = Int32Array.from({ length: v.n }, (_, i) => i);
    else if (policy.sharedAcrossHeads && h > 0) updates[h].keep = updates[0].keep, scores[h] = scores[0];
    else updates[h].keep = select(scores[h] = policy.score(v), v.n, keep, protect);
  }
  const fresh = lowC ? lowC.fresh(updates, layer.lengths) : { keys: newKeys, values: result.newValues[l], stride: S };
  if (step.low && rule.merge) throw new Error("a low tier and a merger both claim the evicted entries");
  const merged = rule.merge && await mergeLayer(store, l, updates, scores, { ...fresh, count: c }, protect, rule.merge);
  if (step.low) demoteLayer(store, step.low, l, updates, { ...fresh, count: c }, lowC?.count);
  // thin keys: the observation window stays whole, unless it is the patch (not kept)
  store.commit(l, updates, fresh, step.patch ? 0 : rule.keyChannels?.window, result.queryEnergy?.[l]);
  if (merged) writeMerged(store, l, merged);
}

/** Norms of [retained P ; new] with the norms of a head's low keys (f32 [Q, d]) inserted after the P retained. */
function lowKeyNorms(norms: Float32Array, P: number, low: Float32Array, d: number): Float32Array {
  const Q = low.length / d;
  const out = new Float32Array(norms.length + Q);
  out.set(norms.subarray(0, P));
  for (let j = 0; j < Q; j++) {
    let s = 0;
    for (let i = 0; i < d; i++) s += low[j * d + i] ** 2;
    out[P + j] = Math.sqrt(s);
  }
  out.set(norms.subarray(P), P + Q);
  return out;
}

/** ‖k‖₂ of P retained keys followed by c new ones (f32 values or f16 bit patterns). */
function keyNorms(
  past: KvArray,
  pastRow: number,
  P: number,
  fresh: KvArray,
  freshRow: number,
  c: number,
  d: number,
): Float32Array {
  const out = new Float32Array(P + c);
  const norm = (a: KvArray, row: number) => {
    let s = 0;
    for (let i = 0; i < d; i++) {
      const x = a instanceof Float32Array ? a[row * d + i] : fromF16Bits(a[row * d + i]);
      s += x * x;
    }
    return Math.sqrt(s);
  };
  for (let i = 0; i < P; i++) out[i] = norm(past, pastRow + i);
  for (let j = 0; j < c; j++) out[P + j] = norm(fresh, freshRow + j);
  return out;
}
