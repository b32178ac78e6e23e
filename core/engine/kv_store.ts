/**
 * The KV cache tome owns: per layer, preallocated buffers [Hkv, capacity, d]
 * for keys and values (f32, or f16 bit patterns), and per entry its original
 * position and the attention it has accumulated. The graph reads the buffers
 * as they are (zero-copy), with each head's valid length; after a chunk the
 * survivors of each head are compacted in place, in their original order.
 *
 * With thin keys (ThinK, `thin_keys.ts`) a layer's keys live in its
 * `thinKeys` instead (old entries at k channels, the newest at d) and `keys`
 * is empty; the graph gets them expanded to d for each run.
 */
import { compactRows } from "../../kernels/compact.ts";
import { type KvDtype, kvElementBytes, type ModelConfig } from "../model/config.ts";
import type { KvArray, PastKv } from "../model/session.ts";
import {
  allocThinKeys,
  cloneThinKeys,
  commitThinKeys,
  expandKeys,
  growThinKeys,
  type KeyChannels,
  thinKeyElements,
  type ThinKeys,
} from "./thin_keys.ts";

export type { KvDtype };

/** Entries as rows: keys and values [rows, d], and per row its position and statistics. */
export interface EntryRows {
  keys: KvArray;
  values: KvArray;
  positions: Int32Array;
  accumulated: Float32Array;
  seen: Float32Array;
  importance: Float32Array;
}

/** Copies rows `from`…`from + n − 1` of `src` to rows `to`… of `dst` (head dim `d`), every field. */
export function copyRows(src: EntryRows, from: number, dst: EntryRows, to: number, n: number, d: number): void {
  dst.keys.set(src.keys.subarray(from * d, (from + n) * d), to * d);
  dst.values.set(src.values.subarray(from * d, (from + n) * d), to * d);
  dst.positions.set(src.positions.subarray(from, from + n), to);
  dst.accumulated.set(src.accumulated.subarray(from, from + n), to);
  dst.seen.set(src.seen.subarray(from, from + n), to);
  dst.importance.set(src.importance.subarray(from, from + n), to);
}

/** {@link copyRows} of every field but the keys (a thin store's keys live in its `thinKeys`). */
function copyRowsButKeys(src: EntryRows, from: number, dst: EntryRows, to: number, n: number, d: number): void {
  dst.values.set(src.values.subarray(from * d, (from + n) * d), to * d);
  for (const f of ["positions", "accumulated", "seen", "importance"] as const) {
    dst[f].set(src[f].subarray(from, from + n), to);
  }
}

/** One layer's cache. */
export interface LayerCache extends EntryRows {
  /** Slots per head. */
  capacity: number;
  /** Valid entries of each KV head. */
  lengths: Int32Array;
  /** [Hkv, capacity]: original token position of each entry. */
  positions: Int32Array;
  /** [Hkv, capacity]: attention mass received so far (H2O). */
  accumulated: Float32Array;
  /** [Hkv, capacity]: queries that have attended to the entry so far. */
  seen: Float32Array;
  /** [Hkv, capacity]: importance given once, when the entry arrived (Locret). */
  importance: Float32Array;
  /** The keys, when the store keeps thin keys (`keys` is then empty). */
  thinKeys?: ThinKeys;
}

/** The entries one head keeps after a chunk: indices into its retained entries followed by the chunk's new ones. */
export interface HeadUpdate {
  keep: Int32Array;
  /** Per considered entry (retained ++ new, length n): position, accumulated mass, queries seen. */
  positions: Int32Array;
  accumulated: Float32Array;
  seen: Float32Array;
  importance: Float32Array;
}

/** The chunk's new entries as the graph returned them: [Hkv, S, d], of which the first `count` are kept candidates. */
export interface FreshEntries {
  keys: KvArray;
  values: KvArray;
  /** Rows per head in `keys`/`values` (the run's token count). */
  stride: number;
}

/**
 * Per-layer KV buffers with each head's valid length, the positions and
 * statistics of every entry, compacted in place after each eviction.
 *
 * @example
 * const store = new KvStore(config, "float16");
 * session.run({ ids, positions, past: store.past() });
 */
export class KvStore {
  readonly layers: LayerCache[];
  readonly bytesPerElement: number;

  /**
   * @param keyChannels thin keys (ThinK): keep `channels` of d key channels for all
   * but each head's newest `window` entries; absent: every key whole.
   */
  constructor(readonly config: ModelConfig, readonly dtype: KvDtype, readonly keyChannels?: KeyChannels) {
    this.bytesPerElement = kvElementBytes(dtype);
    this.layers = Array.from({ length: config.layers }, () => this.#allocate(0));
  }

  /** The cache as the graph takes it (thin keys expanded to d, zeros in pruned channels, for this run only). */
  past(): PastKv {
    const lengths = new Array<number>(this.config.layers * this.config.kvHeads);
    this.layers.forEach((c, l) => c.lengths.forEach((n, h) => (lengths[l * this.config.kvHeads + h] = n)));
    const keys = this.layers.map((c) =>
      c.thinKeys ? expandKeys(c.thinKeys, c.lengths, c.capacity, this.config.headDim) : c.keys
    );
    return { keys, values: this.layers.map((c) => c.values), lengths };
  }

  /** Valid entries summed over layers and heads. */
  entries(): number {
    let n = 0;
    for (const c of this.layers) for (const len of c.lengths) n += len;
    return n;
  }

  /** Bytes of the valid entries (keys, thin ones at their kept channels, and values). */
  bytes(): number {
    const d = this.config.headDim;
    if (!this.keyChannels) return this.entries() * d * 2 * this.bytesPerElement;
    let elements = this.entries() * d;
    for (const c of this.layers) elements += thinKeyElements(c.thinKeys!, c.lengths, d, this.keyChannels.channels);
    return elements * this.bytesPerElement;
  }

  /**
   * Applies each head's selection to layer `l`: head h keeps `updates[h].keep`
   * of its retained entries followed by `fresh`'s first rows. Grows the
   * layer's capacity when a head keeps more than fits, never shrinks it.
   * With thin keys, all but each head's newest `wholeWindow` kept entries
   * become thin (default: the store's window); `queryEnergy` [Hkv, d], the run's window query energy, ranks the
   * channels at the layer's first pruning (ThinK's query factor).
   */
  commit(
    l: number,
    updates: HeadUpdate[],
    fresh: FreshEntries,
    wholeWindow?: number,
    queryEnergy?: ArrayLike<number>,
  ): void {
    const { kvHeads: K, headDim: d } = this.config;
    const old = this.layers[l];
    const need = Math.max(...updates.map((u) => u.keep.length));
    const target = need > old.capacity ? this.#allocate(need) : old;
    if (this.keyChannels) {
      const freshCount = updates[0].positions.length - old.lengths[0];
      target.thinKeys = commitThinKeys(
        old.thinKeys!,
        old.lengths,
        updates,
        fresh,
        freshCount,
        d,
        { ...this.keyChannels, window: wholeWindow ?? this.keyChannels.window },
        target.capacity,
        queryEnergy,
      );
    }
    for (let h = 0; h < K; h++) {
      const { keep } = updates[h];
      const P = old.lengths[h];
      if (!this.keyChannels) {
        compactRows(
          target.keys,
          h * target.capacity,
          old.keys,
          h * old.capacity,
          P,
          fresh.keys,
          h * fresh.stride,
          keep,
          d,
        );
      }
      compactRows(
        target.values,
        h * target.capacity,
        old.values,
        h * old.capacity,
        P,
        fresh.values,
        h * fresh.stride,
        keep,
        d,
      );
      const u = updates[h];
      for (let j = 0; j < keep.length; j++) {
        const at = h * target.capacity + j;
        target.positions[at] = u.positions[keep[j]];
        target.accumulated[at] = u.accumulated[keep[j]];
        target.seen[at] = u.seen[keep[j]];
        target.importance[at] = u.importance[keep[j]];
      }
      target.lengths[h] = keep.length;
    }
    this.layers[l] = target;
  }

  /** Grows every layer to hold at least `extra` more entries per head (before a decode phase). */
  reserve(extra: number): void {
    const { kvHeads: K, headDim: d } = this.config;
    for (let l = 0; l < this.layers.length; l++) {
      const c = this.layers[l];
      const need = Math.max(...c.lengths) + extra;
      const thin = c.thinKeys;
      const fullNeed = thin ? Math.max(...c.lengths.map((n, h) => n - thin.count[h])) + extra : 0;
      if (need <= c.capacity && (!thin || fullNeed <= thin.fullCap)) continue;
      const t = need <= c.capacity ? c : this.#allocate(need);
      if (t !== c) {
        for (let h = 0; h < K; h++) {
          if (thin) copyRowsButKeys(c, h * c.capacity, t, h * need, c.lengths[h], d); // thin keys move below
          else copyRows(c, h * c.capacity, t, h * need, c.lengths[h], d);
          t.lengths[h] = c.lengths[h];
        }
      }
      if (thin) t.thinKeys = growThinKeys(thin, c.lengths, d, t.capacity, Math.max(fullNeed, thin.fullCap));
      this.layers[l] = t;
    }
  }

  /** Writes `count` new entries at the end of every head of layer `l` (no eviction; capacity must suffice). */
  append(l: number, fresh: FreshEntries, count: number, positions: ArrayLike<number>): void {
    const { kvHeads: K, headDim: d } = this.config;
    const c = this.layers[l];
    for (let h = 0; h < K; h++) {
      const at = c.lengths[h];
      if (at + count > c.capacity) throw new Error(`layer ${l} head ${h}: append beyond capacity ${c.capacity}`);
      const src = h * fresh.stride * d;
      const thin = c.thinKeys;
      if (thin) {
        const row = at - thin.count[h];
        if (row + count > thin.fullCap) throw new Error(`layer ${l} head ${h}: append beyond full-key capacity`);
        thin.full.set(fresh.keys.subarray(src, src + count * d), (h * thin.fullCap + row) * d);
      } else {
        c.keys.set(fresh.keys.subarray(src, src + count * d), (h * c.capacity + at) * d);
      }
      c.values.set(fresh.values.subarray(src, src + count * d), (h * c.capacity + at) * d);
      for (let j = 0; j < count; j++) c.positions[h * c.capacity + at + j] = positions[j];
      c.lengths[h] = at + count;
    }
  }

  /** A deep copy: the same entries, capacity and statistics in buffers of its own. */
  clone(): KvStore {
    const copy = new KvStore(this.config, this.dtype, this.keyChannels);
    this.layers.forEach((c, l) => {
      copy.layers[l] = {
        capacity: c.capacity,
        keys: c.keys.slice(),
        values: c.values.slice(),
        lengths: c.lengths.slice(),
        positions: c.positions.slice(),
        accumulated: c.accumulated.slice(),
        seen: c.seen.slice(),
        importance: c.importance.slice(),
        ...(c.thinKeys ? { thinKeys: cloneThinKeys(c.thinKeys) } : {}),
      };
    });
    return copy;
  }

  #allocate(capacity: number): LayerCache {
    const { kvHeads: K, headDim: d } = this.config;
    const n = K * capacity * d;
    const kv = (n: number) => (this.dtype === "float32" ? new Float32Array(n) : new Uint16Array(n));
    const kc = this.keyChannels;
    return {
      capacity,
      keys: kv(kc ? 0 : n),
      values: kv(n),
      lengths: new Int32Array(K),
      positions: new Int32Array(K * capacity),
      accumulated: new Float32Array(K * capacity),
      seen: new Float32Array(K * capacity),
      importance: new Float32Array(K * capacity),
      ...(kc ? { thinKeys: allocThinKeys(this.dtype === "float32", K, d, kc.channels, capacity, 0) } : {}),
    };
  }
}
