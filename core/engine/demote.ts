/**
 * MiKV's demotion (arXiv 2402.18096): after the selection of a step, the
 * entries a head did not keep — retained ones and the run's candidates alike —
 * move to the low tier (`low_store.ts`) instead of being dropped, with their
 * position and accumulated attention; the low tier's budget then drops its
 * least-attended. The balancer is set from the first chunk: per layer and KV
 * head, b_i = sqrt(max|k_i| / max|q_i|) over the chunk's new keys and the
 * queries of the head's group (the graph's `low_query_absmax` output).
 */
import { balanceFactors, dequantizeRow } from "../../kernels/kv_quant.ts";
import { gatherRows } from "../../kernels/merge.ts";
import { fromF16Bits, toF16Bits } from "../../kernels/fp16.ts";
import type { KvArray, RunResult, StatName } from "../model/session.ts";
import type { FreshEntries, HeadUpdate, KvStore } from "./kv_store.ts";
import type { LowStore } from "./low_store.ts";

/**
 * Moves what layer `l`'s heads do not keep (before `store.commit`) into the low tier. With promotion the
 * considered entries are [retained P ; low Q_h ; new], `fresh` holding the low rows then the new ones: kept low
 * entries leave the low tier (promoted), low entries not kept stay there as they are.
 */
export function demoteLayer(
  store: KvStore,
  low: LowStore,
  l: number,
  updates: HeadUpdate[],
  fresh: FreshEntries & { count: number },
  lowCount?: Int32Array,
): void {
  const { kvHeads: K, headDim: d } = store.config;
  const layer = store.layers[l];
  if (layer.thinKeys) throw new Error("the low tier does not take thin keys");
  for (let h = 0; h < K; h++) {
    const u = updates[h];
    const P = layer.lengths[h];
    const Q = lowCount?.[h] ?? 0;
    const n = P + Q + fresh.count;
    if (u.keep.length === n) {
      if (Q > 0) low.admit(l, h, NONE, new Uint8Array(Q).fill(1));
      continue;
    }
    const kept = new Uint8Array(n);
    for (const i of u.keep) kept[i] = 1;
    let lost = 0;
    for (let i = 0; i < n; i++) if (!kept[i] && (i < P || i >= P + Q)) lost++;
    const keys = new Float32Array(lost * d);
    const values = new Float32Array(lost * d);
    const positions = new Int32Array(lost);
    const accumulated = new Float32Array(lost);
    const seen = new Float32Array(lost);
    let j = 0;
    for (let i = 0; i < n; i++) {
      if (kept[i] || (i >= P && i < P + Q)) continue;
      const [srcK, srcV, row] = i < P
        ? [layer.keys, layer.values, h * layer.capacity + i]
        : [fresh.keys, fresh.values, h * fresh.stride + i - P];
      gatherRows(srcK, row, 1, d, keys, j);
      gatherRows(srcV, row, 1, d, values, j);
      positions[j] = u.positions[i];
      accumulated[j] = u.accumulated[i];
      seen[j] = u.seen[i];
      j++;
    }
    low.admit(l, h, { keys, values, positions, accumulated, seen }, kept.subarray(P, P + Q));
  }
}

const NONE = { keys: new Float32Array(0), values: new Float32Array(0), positions: [], accumulated: [], seen: [] };

/** Per layer, the balancer from a chunk's query maxima [Hkv·d] and its `count` new keys [Hkv, stride, d]. */
export function chunkBalance(queryAbsMax: Float32Array, newKeys: KvArray, stride: number, count: number, d: number) {
  const K = queryAbsMax.length / d;
  const kmax = new Float32Array(K * d);
  for (let h = 0; h < K; h++) {
    for (let s = 0; s < count; s++) {
      for (let i = 0; i < d; i++) {
        const at = (h * stride + s) * d + i;
        const x = Math.abs(newKeys instanceof Float32Array ? newKeys[at] : fromF16Bits(newKeys[at]));
        if (x > kmax[h * d + i]) kmax[h * d + i] = x;
      }
    }
  }
  return balanceFactors(queryAbsMax, kmax);
}

/**
 * Layer `l`'s low entries as candidates of a step (promotion: the selection
 * sees them beside the retained and new ones): per head its count, positions,
 * accumulated mass and statistics, and a buffer in the cache's dtype holding,
 * per head, the low entries dequantized (keys times the balancer) followed by
 * the run's first `c` new entries — the `fresh` rows `store.commit` copies
 * kept entries from (a buffer the low store lends, reused by the next layer).
 */
export interface LowCandidates {
  count: Int32Array;
  positions: (h: number) => Int32Array;
  accumulated: (h: number) => Float32Array;
  seen: (h: number) => Float32Array;
  stat: (name: StatName, h: number) => Float32Array;
  /** Head h's low keys as the graph read them (dequantized, times b), f32 [Q_h, d]. */
  keys: (h: number) => Float32Array;
  /**
   * The rows `store.commit` copies from: per head its low entries then the new ones, stride `Q_max + c`; only the
   * low rows `keep` (indices into [retained ; low ; new] with `past` retained entries per head) are filled.
   */
  fresh: (updates: HeadUpdate[], past: Int32Array) => FreshEntries;
}

/** Builds {@link LowCandidates} for layer `l` after `result` (its `c` candidate new entries of `S` run tokens). */
export function lowCandidates(
  store: KvStore,
  low: LowStore,
  l: number,
  result: RunResult,
  c: number,
  S: number,
): LowCandidates {
  const { kvHeads: K, headDim: d } = store.config;
  const x = low.layers[l];
  const cap = x.capacity;
  const count = x.lengths.slice();
  const half = store.dtype === "float16";
  const row = new Float32Array(d);
  /** Low entry j of head h as float32 into `row` (keys times b, as the graph reads them). */
  const read = (h: number, j: number, key: boolean) => {
    dequantizeRow(key ? x.keys : x.values, h * cap + j, row, 0);
    if (key) { for (let i = 0; i < d; i++) row[i] = Math.fround(row[i] * x.balance[h * d + i]); }
    return row;
  };
  /** Low entry j of head h into row `at` of `keys`/`values`, in the cache dtype. */
  const write = (h: number, j: number, keys: KvArray, values: KvArray, at: number) => {
    for (const [dst, key] of [[keys, true], [values, false]] as const) {
      const v = read(h, j, key);
      if (half) { for (let i = 0; i < d; i++) dst[at * d + i] = toF16Bits(v[i]); }
      else dst.set(v, at * d);
    }
  };
  return {
    count,
    positions: (h) => x.positions.slice(h * cap, h * cap + count[h]),
    accumulated: (h) => x.accumulated.slice(h * cap, h * cap + count[h]),
    seen: (h) => x.seen.slice(h * cap, h * cap + count[h]),
    stat: (name, h) => {
      const s = result.lowStats?.[name]?.[l];
      if (!s) throw new Error(`low-tier statistic "${name}" was not fetched`);
      return s.subarray(h * cap, h * cap + count[h]);
    },
    keys: (h) => {
      const keys = new Float32Array(count[h] * d);
      for (let j = 0; j < count[h]; j++) keys.set(read(h, j, true), j * d);
      return keys;
    },
    fresh: (updates, past) => {
      const stride = Math.max(0, ...count) + c;
      // store.commit and demoteLayer read only the rows written here: kept low rows and the new ones
      const { keys, values } = low.scratch(K * stride * d, half);
      const newKeys = result.newKeys[l], newValues = result.newValues[l];
      for (let h = 0; h < K; h++) {
        const P = past[h], Q = count[h];
        for (const i of updates[h].keep) if (i >= P && i < P + Q) write(h, i - P, keys, values, h * stride + i - P);
        keys.set(newKeys.subarray(h * S * d, (h * S + c) * d), (h * stride + Q) * d);
        values.set(newValues.subarray(h * S * d, (h * S + c) * d), (h * stride + Q) * d);
      }
      return { keys, values, stride };
    },
  };
}
