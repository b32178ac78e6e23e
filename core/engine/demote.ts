/**
 * MiKV's demotion (arXiv 2402.18096): after the selection of a step, the
 * entries a head did not keep — retained ones and the run's candidates alike —
 * move to the low tier (`low_store.ts`) instead of being dropped, with their
 * position and accumulated attention; the low tier's budget then drops its
 * least-attended. The balancer is set from the first chunk: per layer and KV
 * head, b_i = sqrt(max|k_i| / max|q_i|) over the chunk's new keys and the
 * queries of the head's group (the graph's `low_query_absmax` output).
 */
import { balanceFactors } from "../../kernels/kv_quant.ts";
import { gatherRows } from "../../kernels/merge.ts";
import { fromF16Bits } from "../../kernels/fp16.ts";
import type { KvArray } from "../model/session.ts";
import type { FreshEntries, HeadUpdate, KvStore } from "./kv_store.ts";
import type { LowStore } from "./low_store.ts";

/** Moves what layer `l`'s heads do not keep (before `store.commit`) into the low tier. */
export function demoteLayer(
  store: KvStore,
  low: LowStore,
  l: number,
  updates: HeadUpdate[],
  fresh: FreshEntries & { count: number },
): void {
  const { kvHeads: K, headDim: d } = store.config;
  const layer = store.layers[l];
  if (layer.thinKeys) throw new Error("the low tier does not take thin keys");
  for (let h = 0; h < K; h++) {
    const u = updates[h];
    const P = layer.lengths[h];
    const n = P + fresh.count;
    if (u.keep.length === n) continue;
    const kept = new Uint8Array(n);
    for (const i of u.keep) kept[i] = 1;
    const lost = n - u.keep.length;
    const keys = new Float32Array(lost * d);
    const values = new Float32Array(lost * d);
    const positions = new Int32Array(lost);
    const accumulated = new Float32Array(lost);
    let j = 0;
    for (let i = 0; i < n; i++) {
      if (kept[i]) continue;
      const [srcK, srcV, row] = i < P
        ? [layer.keys, layer.values, h * layer.capacity + i]
        : [fresh.keys, fresh.values, h * fresh.stride + i - P];
      gatherRows(srcK, row, 1, d, keys, j);
      gatherRows(srcV, row, 1, d, values, j);
      positions[j] = u.positions[i];
      accumulated[j] = u.accumulated[i];
      j++;
    }
    low.admit(l, h, { keys, values, positions, accumulated });
  }
}

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
