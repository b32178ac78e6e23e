/**
 * The merge after selection: a head's considered entries (retained ++ new)
 * are gathered as f32 rows before the store compacts, the run's merger folds
 * dropped entries into kept ones, and after the commit the changed kept rows
 * are written back at their compacted slots (rounded to the cache dtype).
 */
import { gatherRows, scatterRow } from "../../kernels/merge.ts";
import type { KvArray } from "../model/session.ts";
import type { Merger } from "../policies/merge/mod.ts";
import type { Protection } from "../policies/policy.ts";
import type { FreshEntries, HeadUpdate, KvStore } from "./kv_store.ts";

/** Rows to write back after the commit: per head, the kept slots and their merged K/V. */
export interface PendingMerge {
  heads: { slots: Int32Array; rows: Int32Array; keys: Float32Array; values: Float32Array }[];
}

/** Runs `merger` on every head of layer `l` (before `store.commit`), returning what to write after it. */
export function mergeLayer(
  store: KvStore,
  l: number,
  updates: HeadUpdate[],
  scores: Float32Array[],
  fresh: FreshEntries & { count: number },
  protect: Protection,
  merger: Merger,
): PendingMerge {
  const { kvHeads: K, headDim: d } = store.config;
  const layer = store.layers[l];
  const heads: PendingMerge["heads"] = [];
  for (let h = 0; h < K; h++) {
    const u = updates[h];
    const P = layer.lengths[h];
    const n = P + fresh.count;
    if (u.keep.length === n) {
      heads.push({
        slots: new Int32Array(0),
        rows: new Int32Array(0),
        keys: new Float32Array(0),
        values: new Float32Array(0),
      });
      continue;
    }
    const rows = (past: KvArray, now: KvArray) => {
      const x = new Float32Array(n * d);
      gatherRows(past, h * layer.capacity, P, d, x, 0);
      gatherRows(now, h * fresh.stride, fresh.count, d, x, P);
      return x;
    };
    const keys = rows(layer.keys, fresh.keys), values = rows(layer.values, fresh.values);
    const sinks = Math.min(protect.sinks, u.keep.length, n);
    const recent = Math.min(protect.recent, u.keep.length - sinks, n - sinks);
    const changed = merger.merge({
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
    // the slot of a kept entry is its rank in keep
    const slotOf = new Map<number, number>();
    u.keep.forEach((i, j) => slotOf.set(i, j));
    heads.push({ slots: Int32Array.from(changed, (i) => slotOf.get(i)!), rows: changed, keys, values });
  }
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
