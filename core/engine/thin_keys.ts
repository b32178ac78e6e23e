/**
 * Thin keys — ThinK (arXiv 2407.21018): every KV head keeps only k of its d key
 * channels for all but the entries of the observation window, which stay
 * whole: after a step, the newest `window` kept entries (none when the
 * question patch is the window: its entries are not kept, and the question
 * comes back whole as the suffix); entries appended without eviction (the
 * suffix, generated tokens) stay whole until a step that evicts. The store
 * holds the thin keys at k channels (the bytes the meter counts), [Hkv,
 * capacity, k], and the whole ones at d, [Hkv, fullCap, d]; values stay whole.
 *
 * Channel choice. ThinK scores channel i of a head by ‖Q_win[:, i]·K[:, i]ᵀ‖_F
 * over the observation-window queries and the current keys. That is an outer
 * product's norm, so it factors: ‖Q_win[:, i]‖·‖K[:, i]‖. The query factor
 * comes from the graph (`GraphOptions.queryEnergy`, `query_energy.ts`):
 * Σ q[:, i]² over the window queries of the run (the question patch when it
 * rides along, else the chunk's last `window` queries: the rows the `window`
 * statistic reads) and the query heads of the KV head's group, in the cached
 * keys' frame (rotated in original mode, unrotated in compact mode); the key
 * factor from the candidates here. Channels are chosen per layer and head
 * once, at the layer's first pruning (over that step's candidates and window
 * queries), and kept for the run.
 *
 * The graph takes past keys [1, Hkv, P, d], so before each run {@link expandKeys}
 * writes the thin rows back to width d with zeros in the pruned channels (q·k
 * over the kept channels equals q·k of the expanded row exactly). Those expanded
 * buffers are transient: made for one run of every layer (the session runs all
 * layers in one graph call) and dropped after it; they are not part of the store.
 */
import {
  addChannelEnergy,
  gatherChannels,
  type KeyArray,
  outerNormScores,
  scatterChannels,
  scatterRows,
  topChannels,
} from "../../kernels/channels.ts";
import type { FreshEntries, HeadUpdate } from "./kv_store.ts";

/** Key channels kept per thin key, and the newest entries per head that keep all d channels. */
export interface KeyChannels {
  channels: number;
  window: number;
}

/** One layer's keys in a thin store. */
export interface ThinKeys {
  /** Channels kept per thin row. */
  k: number;
  /** [Hkv, k]: each head's kept channels (ascending), chosen at the layer's first pruning; null before it. */
  channels: Int32Array | null;
  /** [Hkv, capacity, k]: rows 0…count[h]−1 of head h, kept channels only. */
  thin: KeyArray;
  /** Rows per head `thin` has room for (the layer's capacity). */
  capacity: number;
  /** [Hkv]: thin rows of each head (always its oldest). */
  count: Int32Array;
  /** [Hkv, fullCap, d]: rows count[h]… of head h at full width. */
  full: KeyArray;
  fullCap: number;
}

/** Empty thin keys with room for `capacity` thin and `fullCap` full rows per head. */
export function allocThinKeys(
  f32: boolean,
  K: number,
  d: number,
  k: number,
  capacity: number,
  fullCap: number,
): ThinKeys {
  const make = (n: number) => (f32 ? new Float32Array(n) : new Uint16Array(n));
  return {
    k,
    channels: null,
    thin: make(K * capacity * k),
    capacity,
    count: new Int32Array(K),
    full: make(K * fullCap * d),
    fullCap,
  };
}

/** Key elements held for heads of `lengths` entries: k per thin row, d per full row. */
export function thinKeyElements(t: ThinKeys, lengths: ArrayLike<number>, d: number, k: number): number {
  let n = 0;
  for (let h = 0; h < t.count.length; h++) n += t.count[h] * k + (lengths[h] - t.count[h]) * d;
  return n;
}

/** Row r of head h at full width (pruned channels 0) written to `out[to…]`. */
function expandRow(t: ThinKeys, h: number, r: number, d: number, out: KeyArray, to: number): void {
  const m = t.count[h];
  if (r < m) {
    const k = t.k;
    scatterChannels(out, to, t.thin, (h * t.capacity + r) * k, t.channels!.subarray(h * k, (h + 1) * k), d);
  } else {
    const from = (h * t.fullCap + r - m) * d;
    out.set(t.full.subarray(from, from + d), to);
  }
}

/** The layer's keys as the graph takes them, [Hkv, capacity, d], pruned channels 0 (a new, transient buffer). */
export function expandKeys(t: ThinKeys, lengths: ArrayLike<number>, capacity: number, d: number): KeyArray {
  const K = t.count.length;
  const out = t.full instanceof Float32Array ? new Float32Array(K * capacity * d) : new Uint16Array(K * capacity * d);
  for (let h = 0; h < K; h++) {
    const m = t.count[h];
    if (m > 0) {
      scatterRows(out, h * capacity, t.thin, h * t.capacity, m, t.channels!.subarray(h * t.k, (h + 1) * t.k), d);
    }
    out.set(t.full.subarray(h * t.fullCap * d, (h * t.fullCap + lengths[h] - m) * d), (h * capacity + m) * d);
  }
  return out;
}

/** Head h's `n` retained keys at full width, [n, d] (for key-norm scoring). */
export function headKeys(t: ThinKeys, h: number, n: number, d: number): KeyArray {
  const out = t.full instanceof Float32Array ? new Float32Array(n * d) : new Uint16Array(n * d);
  for (let r = 0; r < n; r++) expandRow(t, h, r, d, out, r * d);
  return out;
}

/**
 * Each head's kept channels: the `k` largest ‖Q_win[:, i]·K[:, i]ᵀ‖_F = ‖Q_win[:, i]‖·‖K[:, i]‖, with
 * `queryEnergy` [Hkv, d] the window queries' Σ q[:, i]² and K the head's candidate keys (retained rows, all still
 * full, then the fresh ones).
 */
export function chooseChannels(
  t: ThinKeys,
  lengths: ArrayLike<number>,
  fresh: FreshEntries,
  freshCount: number,
  d: number,
  k: number,
  queryEnergy: ArrayLike<number>,
): Int32Array {
  const K = t.count.length;
  if (queryEnergy.length !== K * d) throw new Error(`query energy: ${queryEnergy.length} values, not ${K}×${d}`);
  const channels = new Int32Array(K * k);
  for (let h = 0; h < K; h++) {
    const energy = new Float64Array(d);
    addChannelEnergy(energy, t.full, h * t.fullCap, lengths[h] - t.count[h], d);
    addChannelEnergy(energy, fresh.keys as KeyArray, h * fresh.stride, freshCount, d);
    channels.set(topChannels(outerNormScores(queryEnergy, h * d, energy, d), k), h * k);
  }
  return channels;
}

/**
 * The keys after a selection: head h keeps `updates[h].keep` of its retained
 * entries (`lengths[h]`) followed by `fresh`'s first `freshCount` rows; all
 * but its newest `window` kept entries are thin. A thin entry never widens
 * again: should one land among the newest (the plan protects the window, so it
 * does not), the thin rows extend to it. `capacity` ≥ every head's kept count;
 * the thin buffer is reused in place when it has that capacity already.
 * `queryEnergy` (the run's, [Hkv, d]) is needed at the layer's first pruning,
 * where {@link chooseChannels} ranks the channels.
 */
export function commitThinKeys(
  t: ThinKeys,
  lengths: ArrayLike<number>,
  updates: HeadUpdate[],
  fresh: FreshEntries,
  freshCount: number,
  d: number,
  kc: KeyChannels,
  capacity: number,
  queryEnergy?: ArrayLike<number>,
): ThinKeys {
  const K = t.count.length, k = kc.channels;
  const counts = updates.map((u, h) => {
    const n = u.keep.length;
    let thinKept = 0;
    while (thinKept < n && u.keep[thinKept] < t.count[h]) thinKept++;
    return Math.max(n - Math.min(n, kc.window), thinKept);
  });
  let channels = t.channels;
  if (!channels && counts.some((m) => m > 0)) {
    if (!queryEnergy) throw new Error("thin keys: the first pruning needs the run's query energy");
    channels = chooseChannels(t, lengths, fresh, freshCount, d, k, queryEnergy);
  }
  const f32 = t.full instanceof Float32Array;
  const fullCap = Math.max(0, ...updates.map((u, h) => u.keep.length - counts[h]));
  const out = allocThinKeys(f32, K, d, k, capacity === t.capacity ? 0 : capacity, fullCap);
  if (capacity === t.capacity) out.thin = t.thin;
  out.capacity = capacity;
  out.channels = channels;
  for (let h = 0; h < K; h++) {
    const { keep } = updates[h];
    const m = t.count[h], P = lengths[h], mNew = counts[h];
    const ch = channels?.subarray(h * k, (h + 1) * k);
    /** Where candidate j's full-width row is: the old full rows, or the fresh ones. */
    const fullSource = (j: number): [KeyArray, number] =>
      j < P ? [t.full, (h * t.fullCap + j - m) * d] : [fresh.keys as KeyArray, (h * fresh.stride + j - P) * d];
    for (let r = 0; r < keep.length; r++) {
      const j = keep[r];
      if (r < mNew) {
        const to = (h * capacity + r) * k;
        if (j < m) {
          const from = (h * t.capacity + j) * k;
          if (out.thin === t.thin) out.thin.copyWithin(to, from, from + k); // r ≤ j: rows only move forward
          else out.thin.set(t.thin.subarray(from, from + k), to);
        } else {
          const [src, from] = fullSource(j);
          gatherChannels(out.thin, to, src, from, ch!);
        }
      } else {
        const [src, from] = fullSource(j);
        out.full.set(src.subarray(from, from + d), (h * fullCap + r - mNew) * d);
      }
    }
    out.count[h] = mNew;
  }
  return out;
}

/** The same keys with room for `capacity` thin and `fullCap` full rows per head (never less than now). */
export function growThinKeys(
  t: ThinKeys,
  lengths: ArrayLike<number>,
  d: number,
  capacity: number,
  fullCap: number,
): ThinKeys {
  const K = t.count.length, k = t.k;
  const out = allocThinKeys(t.full instanceof Float32Array, K, d, k, capacity, fullCap);
  out.channels = t.channels;
  out.count.set(t.count);
  for (let h = 0; h < K; h++) {
    const m = t.count[h];
    out.thin.set(t.thin.subarray(h * t.capacity * k, (h * t.capacity + m) * k), h * capacity * k);
    out.full.set(t.full.subarray(h * t.fullCap * d, (h * t.fullCap + lengths[h] - m) * d), h * fullCap * d);
  }
  return out;
}

/** A deep copy. */
export function cloneThinKeys(t: ThinKeys): ThinKeys {
  return {
    ...t,
    channels: t.channels?.slice() ?? null,
    thin: t.thin.slice(),
    count: t.count.slice(),
    full: t.full.slice(),
  };
}

/** A layer's keys packed head after head, each head's thin rows ([count, k]) then its whole ones ([n − count, d]). */
export interface PackedThinKeys {
  /** [Hkv]: thin rows of each head. */
  count: Int32Array;
  /** [Hkv, k]: the kept channels, null before the layer's first pruning. */
  channels: Int32Array | null;
  rows: KeyArray;
}

/** Key elements of a packed layer: k per thin row, d per whole one. */
export function packedThinElements(count: ArrayLike<number>, lengths: ArrayLike<number>, k: number, d: number): number {
  let n = 0;
  for (let h = 0; h < lengths.length; h++) n += count[h] * k + (lengths[h] - count[h]) * d;
  return n;
}

/** The keys of heads holding `lengths` entries, packed without free rows (what a saved state keeps). */
export function packThinKeys(t: ThinKeys, lengths: ArrayLike<number>, d: number): PackedThinKeys {
  const K = t.count.length, k = t.k;
  const n = packedThinElements(t.count, lengths, k, d);
  const rows = t.full instanceof Float32Array ? new Float32Array(n) : new Uint16Array(n);
  let at = 0;
  for (let h = 0; h < K; h++) {
    const m = t.count[h], whole = lengths[h] - m;
    rows.set(t.thin.subarray(h * t.capacity * k, (h * t.capacity + m) * k), at);
    at += m * k;
    rows.set(t.full.subarray(h * t.fullCap * d, (h * t.fullCap + whole) * d), at);
    at += whole * d;
  }
  return { count: t.count.slice(), channels: t.channels?.slice() ?? null, rows };
}

/**
 * Thin keys from packed ones (a loaded state's), with room for `capacity` rows per head; the caller has checked
 * the sizes (counts ≤ lengths ≤ capacity, `rows` of {@link packedThinElements}, channels [Hkv, k] when any row is thin).
 */
export function unpackThinKeys(
  p: PackedThinKeys,
  lengths: ArrayLike<number>,
  k: number,
  d: number,
  capacity: number,
): ThinKeys {
  const K = p.count.length;
  const fullCap = Math.max(0, ...Array.from({ length: K }, (_, h) => lengths[h] - p.count[h]));
  const t = allocThinKeys(p.rows instanceof Float32Array, K, d, k, capacity, fullCap);
  t.channels = p.channels?.slice() ?? null;
  t.count.set(p.count);
  let at = 0;
  for (let h = 0; h < K; h++) {
    const m = p.count[h], whole = lengths[h] - m;
    t.thin.set(p.rows.subarray(at, at + m * k), h * capacity * k);
    at += m * k;
    t.full.set(p.rows.subarray(at, at + whole * d), h * fullCap * d);
    at += whole * d;
  }
  return t;
}
