/**
 * MiKV's low tier ("No Token Left Behind", arXiv 2402.18096): the entries
 * that lost the eviction, kept at 4 or 2 bits (`kernels/kv_quant.ts`) instead
 * of dropped. Per layer, preallocated buffers [Hkv, capacity, ·] of packed
 * values, steps and mins, fed to the graph as they are (zero-copy, like the
 * high tier), and per entry its original position and the attention mass it
 * has accumulated (carried over from the high tier when it arrives, then
 * grown by the low tier's own `all` statistic every run).
 *
 * Keys are stored balanced, k_i / b_i, with the layer's balancer b set once
 * from the first chunk's queries and keys ({@link LowStore.setBalance}); the
 * graph multiplies the dequantized keys by b. Each head keeps at most
 * `budget(l, h)` entries: when admitting more, the entries with the least
 * accumulated mass are dropped (ties: the older first), and the survivors stay
 * in position order.
 */
import {
  allocRows,
  balanceKeys,
  type KvQuantSpec,
  type QuantizedRows,
  quantizeRowsInto,
  rowBytes,
} from "../../kernels/kv_quant.ts";
import type { ModelConfig } from "../model/config.ts";
import type { LowPast } from "../model/session.ts";

/** One layer's low tier. */
export interface LowLayer {
  capacity: number;
  lengths: Int32Array;
  keys: QuantizedRows;
  values: QuantizedRows;
  /** [Hkv, capacity] */
  positions: Int32Array;
  /** [Hkv, capacity] */
  accumulated: Float32Array;
  /** [Hkv, capacity]: queries that could see the entry (H2O divides its mass by them). */
  seen: Float32Array;
  /** [Hkv·d]: the balancer's factors (ones until set). */
  balance: Float32Array;
}

/**
 * One layer's low entries packed head after head (Σ lengths rows, no free slots between heads), with its balancer: a
 * saved state's layout.
 */
export type PackedLowLayer = Omit<LowLayer, "capacity">;

/** Entries arriving in the low tier for one head: f32 rows [n, d] (keys rotated, unbalanced). */
export interface LowArrivals {
  keys: Float32Array;
  values: Float32Array;
  positions: ArrayLike<number>;
  accumulated: ArrayLike<number>;
  seen: ArrayLike<number>;
}

/** The low tier of every layer, with its per-head budgets. */
export class LowStore {
  readonly layers: LowLayer[];

  constructor(
    readonly config: ModelConfig,
    readonly spec: KvQuantSpec,
    readonly budget: (l: number, h: number) => number,
  ) {
    const { layers: L, kvHeads: K, headDim: d } = config;
    this.layers = Array.from({ length: L }, () => ({
      capacity: 0,
      lengths: new Int32Array(K),
      keys: allocRows(0, d, spec),
      values: allocRows(0, d, spec),
      positions: new Int32Array(0),
      accumulated: new Float32Array(0),
      seen: new Float32Array(0),
      balance: new Float32Array(K * d).fill(1),
    }));
  }

  /** Sets layer `l`'s balancer [Hkv·d] (before any entry arrives: stored keys are divided by it). */
  setBalance(l: number, b: Float32Array): void {
    const layer = this.layers[l];
    if (layer.lengths.some((n) => n > 0)) throw new Error(`low tier layer ${l}: balancer set after entries arrived`);
    layer.balance.set(b);
  }

  /** What the graph is fed. */
  past(): LowPast {
    const K = this.config.kvHeads;
    const lengths = new Array<number>(this.layers.length * K);
    this.layers.forEach((layer, l) => layer.lengths.forEach((n, h) => lengths[l * K + h] = n));
    return {
      keys: this.layers.map((x) => x.keys),
      values: this.layers.map((x) => x.values),
      balance: this.layers.map((x) => x.balance),
      lengths,
    };
  }

  /**
   * Adds layer `l`'s low-tier `all` mass of the last run ([Hkv, capacity]) to each entry's accumulated mass, and
   * the run's `queries` to the queries each has seen.
   */
  accumulate(l: number, all: Float32Array, queries: number): void {
    const layer = this.layers[l];
    const cap = layer.capacity;
    for (let h = 0; h < layer.lengths.length; h++) {
      for (let i = 0; i < layer.lengths[h]; i++) {
        layer.accumulated[h * cap + i] += all[h * cap + i];
        layer.seen[h * cap + i] += queries;
      }
    }
  }

  /**
   * Admits `a` into layer `l`, head `h`: quantizes the arrivals, and when the
   * head would hold more than its budget keeps the entries with the most
   * accumulated mass (old and new alike), in position order. `leaving` marks
   * held entries (by slot) that leave first: promoted to the high tier.
   */
  admit(l: number, h: number, a: LowArrivals, leaving?: Uint8Array): void {
    const { headDim: d } = this.config;
    const layer = this.layers[l];
    const n = a.positions.length;
    const P = layer.lengths[h];
    if (n === 0 && !leaving?.some((x) => x)) return;
    let budget = Math.max(0, Math.min(this.budget(l, h), P + n));
    // candidates: the head's entries (0..P−1), then the arrivals (P..P+n−1); keep the top `budget` by mass
    // each candidate's mass, position and queries seen, gathered once (the sorts read them many times)
    const base = h * layer.capacity;
    const mass = new Float64Array(P + n), pos = new Float64Array(P + n), seenOf = new Float64Array(P + n);
    mass.set(layer.accumulated.subarray(base, base + P));
    pos.set(layer.positions.subarray(base, base + P));
    seenOf.set(layer.seen.subarray(base, base + P));
    for (let i = 0; i < n; i++) mass[P + i] = a.accumulated[i], pos[P + i] = a.positions[i], seenOf[P + i] = a.seen[i];
    const candidates: number[] = [];
    for (let i = 0; i < P + n; i++) if (i >= P || !leaving?.[i]) candidates.push(i);
    const order = candidates
      .sort((x, y) => mass[y] - mass[x] || pos[y] - pos[x])
      .slice(0, budget)
      .sort((x, y) => pos[x] - pos[y]);
    budget = order.length;
    this.#reserve(l, budget);
    const cap = layer.capacity;
    const bytes = rowBytes(d, this.spec.bits);
    const groups = d / this.spec.group;
    const b = layer.balance.subarray(h * d, (h + 1) * d);
    const balanced = balanceKeys(a.keys, n, b);
    // the head's old rows, read from a copy: arrivals interleave with them by position, so a row may move up
    const old = [layer.keys, layer.values].map((t) => ({
      data: t.data.slice(h * cap * bytes, (h * cap + P) * bytes),
      scales: t.scales.slice(h * cap * groups, (h * cap + P) * groups),
      mins: t.mins.slice(h * cap * groups, (h * cap + P) * groups),
    }));
    const positions = new Int32Array(budget);
    const accumulated = new Float32Array(budget);
    const seen = new Float32Array(budget);
    for (let j = 0; j < order.length; j++) {
      const i = order[j];
      positions[j] = pos[i];
      accumulated[j] = mass[i];
      seen[j] = seenOf[i];
      const slot = h * cap + j;
      if (i < P) {
        copyRow(old[0], i, layer.keys, slot, bytes, groups);
        copyRow(old[1], i, layer.values, slot, bytes, groups);
      } else {
        quantizeRowsInto(balanced, i - P, 1, layer.keys, slot);
        quantizeRowsInto(a.values, i - P, 1, layer.values, slot);
      }
    }
    layer.positions.set(positions, h * cap);
    layer.accumulated.set(accumulated, h * cap);
    layer.seen.set(seen, h * cap);
    layer.lengths[h] = budget;
  }

  /** Grows layer `l`'s capacity to at least `n` slots per head (entries kept, slots past the lengths zero). */
  #reserve(l: number, n: number): void {
    const layer = this.layers[l];
    if (n <= layer.capacity) return;
    const { kvHeads: K, headDim: d } = this.config;
    const cap = Math.max(n, Math.ceil(layer.capacity * 1.5));
    const grow = (q: QuantizedRows) => {
      const out = allocRows(K * cap, d, this.spec);
      const bytes = rowBytes(d, this.spec.bits);
      const groups = d / this.spec.group;
      for (let h = 0; h < K; h++) {
        const len = layer.lengths[h];
        out.data.set(q.data.subarray(h * layer.capacity * bytes, (h * layer.capacity + len) * bytes), h * cap * bytes);
        for (const f of ["scales", "mins"] as const) {
          out[f].set(q[f].subarray(h * layer.capacity * groups, (h * layer.capacity + len) * groups), h * cap * groups);
        }
      }
      return out;
    };
    const growFlat = <T extends Int32Array | Float32Array>(x: T, make: (n: number) => T) => {
      const out = make(K * cap);
      for (let h = 0; h < K; h++) {
        out.set(x.subarray(h * layer.capacity, h * layer.capacity + layer.lengths[h]) as T, h * cap);
      }
      return out;
    };
    layer.keys = grow(layer.keys);
    layer.values = grow(layer.values);
    layer.positions = growFlat(layer.positions, (m) => new Int32Array(m));
    layer.accumulated = growFlat(layer.accumulated, (m) => new Float32Array(m));
    layer.seen = growFlat(layer.seen, (m) => new Float32Array(m));
    layer.capacity = cap;
  }

  /** An independent copy (a forked sequence's low tier). */
  clone(): LowStore {
    const copy = new LowStore(this.config, this.spec, this.budget);
    const rows = (q: QuantizedRows): QuantizedRows => ({
      ...q,
      data: q.data.slice(),
      scales: q.scales.slice(),
      mins: q.mins.slice(),
    });
    this.layers.forEach((x, l) => {
      copy.layers[l] = {
        capacity: x.capacity,
        lengths: x.lengths.slice(),
        keys: rows(x.keys),
        values: rows(x.values),
        positions: x.positions.slice(),
        accumulated: x.accumulated.slice(),
        seen: x.seen.slice(),
        balance: x.balance.slice(),
      };
    });
    copy.balanced = this.balanced;
    return copy;
  }

  #scratch: { keys: Float32Array | Uint16Array; values: Float32Array | Uint16Array } | null = null;

  /**
   * Two buffers of `n` elements (f32, or f16 bit patterns when `half`) for a step's rows, reused from layer to
   * layer and step to step: what they held before is still there, so a user reads back only rows it wrote.
   */
  scratch(n: number, half: boolean): { keys: Float32Array | Uint16Array; values: Float32Array | Uint16Array } {
    const s = this.#scratch;
    if (s && s.keys.length >= n && (s.keys instanceof Uint16Array) === half) {
      return { keys: s.keys.subarray(0, n), values: s.values.subarray(0, n) };
    }
    const make = () => (half ? new Uint16Array(n) : new Float32Array(n));
    this.#scratch = { keys: make(), values: make() };
    return this.#scratch;
  }

  /** Whether the balancer has been set (from the first chunk). */
  balanced = false;

  /** Layer `l`'s entries packed head after head, without free slots (what a saved state keeps). */
  packed(l: number): PackedLowLayer {
    const { kvHeads: K, headDim: d } = this.config;
    const layer = this.layers[l];
    const n = layer.lengths.reduce((a, b) => a + b, 0);
    const bytes = rowBytes(d, this.spec.bits);
    const groups = d / this.spec.group;
    const cap = layer.capacity;
    const out: PackedLowLayer = {
      lengths: layer.lengths.slice(),
      keys: allocRows(n, d, this.spec),
      values: allocRows(n, d, this.spec),
      positions: new Int32Array(n),
      accumulated: new Float32Array(n),
      seen: new Float32Array(n),
      balance: layer.balance.slice(),
    };
    let at = 0;
    for (let h = 0; h < K; h++) {
      const len = layer.lengths[h];
      for (const k of ["keys", "values"] as const) {
        out[k].data.set(layer[k].data.subarray(h * cap * bytes, (h * cap + len) * bytes), at * bytes);
        for (const f of ["scales", "mins"] as const) {
          out[k][f].set(layer[k][f].subarray(h * cap * groups, (h * cap + len) * groups), at * groups);
        }
      }
      out.positions.set(layer.positions.subarray(h * cap, h * cap + len), at);
      out.accumulated.set(layer.accumulated.subarray(h * cap, h * cap + len), at);
      out.seen.set(layer.seen.subarray(h * cap, h * cap + len), at);
      at += len;
    }
    return out;
  }

  /**
   * Replaces layer `l` with packed entries (a loaded state's), with room for `capacity` entries per head (at
   * least the largest head's count; the graph's reductions run over every slot, so a read goes on bit for bit
   * only at the capacity it had). The caller has checked the sizes (every array holds Σ lengths rows of this
   * store's spec) and the balancer's length.
   */
  unpack(l: number, p: PackedLowLayer, capacity = 0): void {
    const { kvHeads: K, headDim: d } = this.config;
    const cap = Math.max(capacity, ...p.lengths);
    const bytes = rowBytes(d, this.spec.bits);
    const groups = d / this.spec.group;
    const layer: LowLayer = {
      capacity: cap,
      lengths: p.lengths.slice(),
      keys: allocRows(K * cap, d, this.spec),
      values: allocRows(K * cap, d, this.spec),
      positions: new Int32Array(K * cap),
      accumulated: new Float32Array(K * cap),
      seen: new Float32Array(K * cap),
      balance: Float32Array.from(p.balance),
    };
    let at = 0;
    for (let h = 0; h < K; h++) {
      const len = p.lengths[h];
      for (const k of ["keys", "values"] as const) {
        layer[k].data.set(p[k].data.subarray(at * bytes, (at + len) * bytes), h * cap * bytes);
        for (const f of ["scales", "mins"] as const) {
          layer[k][f].set(p[k][f].subarray(at * groups, (at + len) * groups), h * cap * groups);
        }
      }
      layer.positions.set(p.positions.subarray(at, at + len), h * cap);
      layer.accumulated.set(p.accumulated.subarray(at, at + len), h * cap);
      layer.seen.set(p.seen.subarray(at, at + len), h * cap);
      at += len;
    }
    this.layers[l] = layer;
  }

  /** Entries held, all layers and heads. */
  entries(): number {
    let n = 0;
    for (const layer of this.layers) for (const x of layer.lengths) n += x;
    return n;
  }

  /** Bytes of the entries held: packed keys and values with their steps and mins. */
  bytes(): number {
    return this.entries() * lowEntryBytes(this.config.headDim, this.spec);
  }
}

/** Copies packed row `i` of `src` (values, steps, mins) to row `slot` of `dst`, element by element (short rows). */
function copyRow(
  src: { data: Uint8Array; scales: Float32Array | Uint16Array; mins: Float32Array | Uint16Array },
  i: number,
  dst: QuantizedRows,
  slot: number,
  bytes: number,
  groups: number,
): void {
  for (let t = 0, f = i * bytes, o = slot * bytes; t < bytes; t++) dst.data[o + t] = src.data[f + t];
  for (let t = 0, f = i * groups, o = slot * groups; t < groups; t++) {
    dst.scales[o + t] = src.scales[f + t];
    dst.mins[o + t] = src.mins[f + t];
  }
}

/**
 * The default low-tier budget: as many low entries as fit in the bytes of `highEntries` entries at the cache dtype
 * (`kvBytes` bytes a value: 4 or 2).
 */
export function sameBytesBudget(highEntries: number, d: number, kvBytes: number, spec: KvQuantSpec): number {
  return Math.floor((highEntries * 2 * d * kvBytes) / lowEntryBytes(d, spec));
}

/** Bytes one low-tier entry (a key and a value of one head) takes. */
export function lowEntryBytes(d: number, spec: KvQuantSpec): number {
  const param = spec.params === "float32" ? 4 : 2;
  return 2 * (rowBytes(d, spec.bits) + 2 * (d / spec.group) * param);
}
