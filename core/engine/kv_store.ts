/**
 * The KV cache tome owns: per layer, preallocated buffers [Hkv, capacity, d]
 * for keys and values (f32, or f16 bit patterns), and per entry its original
 * position and the attention it has accumulated. The graph reads the buffers
 * as they are (zero-copy), with each head's valid length; after a chunk the
 * survivors of each head are compacted in place, in their original order.
 */
import { compactRows } from "../../kernels/compact.ts";
import { type KvDtype, kvElementBytes, type ModelConfig } from "../model/config.ts";
import type { KvArray, PastKv } from "../model/session.ts";

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

  constructor(readonly config: ModelConfig, readonly dtype: KvDtype) {
    this.bytesPerElement = kvElementBytes(dtype);
    this.layers = Array.from({ length: config.layers }, () => this.#allocate(0));
  }

  /** The cache as the graph takes it. */
  past(): PastKv {
    const lengths = new Array<number>(this.config.layers * this.config.kvHeads);
    this.layers.forEach((c, l) => c.lengths.forEach((n, h) => (lengths[l * this.config.kvHeads + h] = n)));
    return { keys: this.layers.map((c) => c.keys), values: this.layers.map((c) => c.values), lengths };
  }

  /** Valid entries summed over layers and heads. */
  entries(): number {
    let n = 0;
    for (const c of this.layers) for (const len of c.lengths) n += len;
    return n;
  }

  /** Bytes of the valid entries (keys and values). */
  bytes(): number {
    return this.entries() * this.config.headDim * 2 * this.bytesPerElement;
  }

  /**
   * Applies each head's selection to layer `l`: head h keeps `updates[h].keep`
   * of its retained entries followed by `fresh`'s first rows. Grows the
   * layer's capacity when a head keeps more than fits, never shrinks it.
   */
  commit(l: number, updates: HeadUpdate[], fresh: FreshEntries): void {
    const { kvHeads: K, headDim: d } = this.config;
    const old = this.layers[l];
    const need = Math.max(...updates.map((u) => u.keep.length));
    const target = need > old.capacity ? this.#allocate(need) : old;
    for (let h = 0; h < K; h++) {
      const { keep } = updates[h];
      const P = old.lengths[h];
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
      if (need <= c.capacity) continue;
      const t = this.#allocate(need);
      for (let h = 0; h < K; h++) {
        copyRows(c, h * c.capacity, t, h * need, c.lengths[h], d);
        t.lengths[h] = c.lengths[h];
      }
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
      c.keys.set(fresh.keys.subarray(src, src + count * d), (h * c.capacity + at) * d);
      c.values.set(fresh.values.subarray(src, src + count * d), (h * c.capacity + at) * d);
      for (let j = 0; j < count; j++) c.positions[h * c.capacity + at + j] = positions[j];
      c.lengths[h] = at + count;
    }
  }

  /** A deep copy: the same entries, capacity and statistics in buffers of its own. */
  clone(): KvStore {
    const copy = new KvStore(this.config, this.dtype);
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
      };
    });
    return copy;
  }

  #allocate(capacity: number): LayerCache {
    const { kvHeads: K, headDim: d } = this.config;
    const n = K * capacity * d;
    const kv = () => (this.dtype === "float32" ? new Float32Array(n) : new Uint16Array(n));
    return {
      capacity,
      keys: kv(),
      values: kv(),
      lengths: new Int32Array(K),
      positions: new Int32Array(K * capacity),
      accumulated: new Float32Array(K * capacity),
      seen: new Float32Array(K * capacity),
      importance: new Float32Array(K * capacity),
    };
  }
}
