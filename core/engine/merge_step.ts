/**
 * The merge after selection: a head's considered entries (retained ++ new)
 * are gathered as f32 rows before the store compacts, the merger's similarity
 * searches run for all heads at once, the run's merger folds
 * dropped entries into kept ones, and after the commit the changed kept rows
 * are written back at their compacted slots (rounded to the cache dtype).
 */
import { gatherRows, scatterRow } from "../../kernels/merge.ts";
import type { KvArray } from "../model/session.ts";
import { nearestAll } from "../model/onnx/similarity.ts";
import type { MergeHead, Merger } from "../policies/merge/mod.ts";
import type { Protection } from "../policies/policy.ts";
import type { FreshEntries, HeadUpdate, KvStore } from "./kv_store.ts";

/**
 * Per store, the f32 rows a layer's merge works in (keys and values of every head), reused from layer to layer: a
 * layer's rows are written back (`writeMerged`) before the next layer's merge begins, and a store belongs to one
 * sequence, whose steps run one at a time.
 */
const scratch = new WeakMap<KvStore, Float32Array>();

/** Rows to write back after the commit: per head, the kept slots and their merged K/V. */
export interface PendingMerge {
  heads: { slots: Int32Array; rows: Int32Array; keys: Float32Array; values: Float32Array }[];
}

/**
 * Runs `merger` on every head of layer `l` (before `store.commit`), returning what to write after it. A merger
 * that searches (D2O, EMS) has every head's search run first, as one batched product for the layer
 * (`core/model/onnx/similarity.ts`, exact), before any head merges.
 */
export async function mergeLayer(
  store: KvStore,
  l: number,
  updates: HeadUpdate[],
  scores: Float32Array[],
  fresh: FreshEntries & { count: number },
  protect: Protection,
  merger: Merger,
): Promise<PendingMerge> {
  const { kvHeads: K, headDim: d } = store.config;
  const layer = store.layers[l];
  const merging: (MergeHead | null)[] = [];
  const rowsOf = store.layers[l].lengths.reduce((a, P) => a + P + fresh.count, 0);
  let buffer = scratch.get(store);
  if (!buffer || buffer.length < 2 * rowsOf * d) scratch.set(store, buffer = new Float32Array(2 * rowsOf * d));
  let used = 0;
  for (let h = 0; h < K; h++) {
    const u = updates[h];
    const P = layer.lengths[h];
    const n = P + fresh.count;
    if (u.keep.length === n) {
      merging.push(null);
      continue;
    }
    const rows = (past: KvArray, now: KvArray) => {
      // every row is written: P retained, then the fresh ones
      const x = buffer!.subarray(used, used += n * d);
      gatherRows(past, h * layer.capacity, P, d, x, 0);
      gatherRows(now, h * fresh.stride, fresh.count, d, x, P);
      return x;
    };
    const keys = rows(layer.keys, fresh.keys), values = rows(layer.values, fresh.values);
    const sinks = Math.min(protect.sinks, u.keep.length, n);
    const recent = Math.min(protect.recent, u.keep.length - sinks, n - sinks);
    merging.push({
      layer: l,
      head: h,
      n,
      d,
      keys,
      values,
      keep: u.keep,
      protect: { sinks, recent },
      positions: u.positions,
      importance: scores[h],
    });
  }
  if (merger.search) {
    const asked = merging.flatMap((m) => {
      const s = m && merger.search!(m);
      return s ? [{ head: m, search: s }] : [];
    });
    if (asked.length > 0) {
      const found = await nearestAll(asked.map((a) => a.search), d);
      asked.forEach((a, i) => a.head.nearest = found[i]);
    }
  }
  const heads: PendingMerge["heads"] = merging.map((m) => {
    if (!m) {
      return {
        slots: new Int32Array(0),
        rows: new Int32Array(0),
        keys: new Float32Array(0),
        values: new Float32Array(0),
      };
    }
    const changed = merger.merge(m);
    // the slot of a kept entry is its rank in keep
    const slotOf = new Int32Array(m.n);
    m.keep.forEach((i, j) => slotOf[i] = j);
    return { slots: changed.map((i) => slotOf[i]), rows: changed, keys: m.keys, values: m.values };
  });
  return { heads };
}

/** Writes the merged rows into layer `l`'s compacted buffers. */
export function writeMerged(store: KvStore, l: number, pending: PendingMerge): void {
  const { headDim: d } = store.config;
  const layer = store.layers[l];
  pending.heads.forEach((m, h) => {
    for (let j = 0; j < m.rows.length; j++) {
      const slot = h * layer.capacity + m.slots[j];
      scatterRow(m.keys, m.rows[j], d, layer.keys, slot);
      scatterRow(m.values, m.rows[j], d, layer.values, slot);
    }
  });
}
