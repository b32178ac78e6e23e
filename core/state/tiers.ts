/**
 * A sequence's state beyond its whole-key K/V, to and from a state file's
 * sections (`sections.ts`): the layers' keys when they are thin, MiKV's low
 * tier, and the merger's weights and thresholds. Packing reads the live
 * stores; unpacking builds new ones from a checked payload.
 */
import { TomeError } from "../errors.ts";
import { type KvStore, type LayerCache } from "../engine/kv_store.ts";
import { LowStore } from "../engine/low_store.ts";
import { packThinKeys, unpackThinKeys } from "../engine/thin_keys.ts";
import type { ResolvedRun } from "../engine/resolve.ts";
import type { ModelConfig } from "../model/config.ts";
import type { Merger } from "../policies/merge/merger.ts";
import type { Sequence } from "../engine/sequence.ts";
import type { StateLayer } from "./format.ts";
import { lowCapacity, type SectionPayload, type Sections } from "./sections.ts";

/** Layer `c`'s entries packed head after head (keys whole, or thin rows then whole ones per head). */
export function packLayer(c: LayerCache, d: number): StateLayer {
  const n = c.lengths.reduce((a, b) => a + b, 0);
  const f32 = c.values instanceof Float32Array;
  const make = (m: number) => (f32 ? new Float32Array(m) : new Uint16Array(m));
  const out: StateLayer = {
    keys: c.thinKeys ? packThinKeys(c.thinKeys, c.lengths, d).rows : make(n * d),
    values: make(n * d),
    positions: new Int32Array(n),
    accumulated: new Float32Array(n),
    seen: new Float32Array(n),
    importance: new Float32Array(n),
  };
  let at = 0;
  c.lengths.forEach((len, h) => {
    const from = h * c.capacity;
    if (!c.thinKeys) out.keys.set(c.keys.subarray(from * d, (from + len) * d), at * d);
    out.values.set(c.values.subarray(from * d, (from + len) * d), at * d);
    for (const f of ["positions", "accumulated", "seen", "importance"] as const) {
      out[f].set(c[f].subarray(from, from + len), at);
    }
    at += len;
  });
  return out;
}

/** The sections of `seq` (its low tier, thin keys) and of `merger`, with their payload parts. */
export function packSections(seq: Sequence, merger: Merger | undefined): { sections: Sections; parts: SectionPayload } {
  const sections: Sections = {};
  const parts: SectionPayload = {};
  const { store, low } = seq;
  const { layers: L, kvHeads: K } = store.config;
  if (store.keyChannels) {
    const t = store.layers.map((c) => c.thinKeys!);
    sections.thin = {
      channels: store.keyChannels.channels,
      window: store.keyChannels.window,
      counts: t.map((x) => Array.from(x.count)),
      chosen: t.map((x) => x.channels !== null),
    };
    parts.thin = t.map((x) => x.channels?.slice() ?? null);
  }
  if (low) {
    sections.low = {
      bits: low.spec.bits,
      group: low.spec.group,
      params: low.spec.params,
      budget: low.budget(0, 0),
      balanced: low.balanced,
      lengths: low.layers.map((x) => Array.from(x.lengths)),
      capacity: low.layers.map((x) => x.capacity),
    };
    parts.low = low.layers.map((_, l) => low.packed(l));
  }
  if (merger) {
    const { weights, thresholds } = merger.state;
    sections.merger = { name: merger.name, thresholds: thresholds !== undefined };
    parts.merger = {
      weights: store.layers.map((c, l) => {
        const w = new Float64Array(c.lengths.reduce((a, b) => a + b, 0));
        let at = 0;
        c.lengths.forEach((len, h) => {
          for (let i = 0; i < len; i++) w[at++] = weights.peek(l, h, c.positions[h * c.capacity + i]) ?? NaN;
        });
        return w;
      }),
    };
    if (thresholds) {
      const set = new Uint8Array(L * K), values = new Float64Array(L * K);
      for (let l = 0; l < L; l++) {
        for (let h = 0; h < K; h++) {
          const v = thresholds.get(l, h);
          if (v !== undefined) set[l * K + h] = 1, values[l * K + h] = v;
        }
      }
      parts.merger.thresholds = { set, values };
    }
  }
  return { sections, parts };
}

/** Layer `l` of a store from its packed entries (keys whole or thin, as the store keeps them). */
export function unpackLayer(
  store: KvStore,
  l: number,
  src: StateLayer,
  lengths: number[],
  counts?: number[],
  channels?: Int32Array | null,
): void {
  const { kvHeads: K, headDim: d } = store.config;
  const cap = Math.max(0, ...lengths);
  const f32 = store.dtype === "float32";
  const make = (m: number) => (f32 ? new Float32Array(m) : new Uint16Array(m));
  const kc = store.keyChannels;
  const layer: LayerCache = {
    capacity: cap,
    keys: make(kc ? 0 : K * cap * d),
    values: make(K * cap * d),
    lengths: Int32Array.from(lengths),
    positions: new Int32Array(K * cap),
    accumulated: new Float32Array(K * cap),
    seen: new Float32Array(K * cap),
    importance: new Float32Array(K * cap),
  };
  if (kc) {
    const packed = { count: Int32Array.from(counts!), channels: channels ?? null, rows: src.keys };
    layer.thinKeys = unpackThinKeys(packed, lengths, kc.channels, d, cap);
  }
  let at = 0;
  lengths.forEach((len, h) => {
    const to = h * cap;
    if (!kc) layer.keys.set(src.keys.subarray(at * d, (at + len) * d), to * d);
    layer.values.set(src.values.subarray(at * d, (at + len) * d), to * d);
    for (const f of ["positions", "accumulated", "seen", "importance"] as const) {
      layer[f].set(src[f].subarray(at, at + len), to);
    }
    at += len;
  });
  store.layers[l] = layer;
}

/** The low tier a state holds, on a model whose graph takes `tier` (refused when it does not). */
export function unpackLow(
  config: ModelConfig,
  h: Required<Pick<Sections, "low">>["low"],
  parts: SectionPayload,
  tier: string | undefined,
  refuse: (what: string) => TomeError,
): LowStore {
  if (tier !== `int${h.bits}`) {
    throw refuse(
      `keeps evicted entries at int${h.bits}, the model is loaded ${tier ? `with ${tier}` : "without a low tier"}`,
    );
  }
  const budget = h.budget;
  const low = new LowStore(config, { bits: h.bits, group: h.group, params: h.params }, () => budget);
  parts.low!.forEach((p, l) => low.unpack(l, p, lowCapacity(h.capacity[l], h.lengths[l])));
  low.balanced = h.balanced;
  return low;
}

/** Puts a saved merger state into `merger` (the run's, fresh), by the positions of the store's entries. */
export function unpackMerger(merger: Merger, store: KvStore, parts: SectionPayload): void {
  const { weights, thresholds } = merger.state;
  const saved = parts.merger!;
  weights.clear();
  store.layers.forEach((c, l) => {
    const w = saved.weights[l];
    let at = 0;
    c.lengths.forEach((len, h) => {
      for (let i = 0; i < len; i++, at++) {
        if (!Number.isNaN(w[at])) weights.set(l, h, c.positions[h * c.capacity + i], w[at]);
      }
    });
  });
  if (thresholds && saved.thresholds) {
    thresholds.clear();
    const K = store.config.kvHeads;
    saved.thresholds.set.forEach((s, i) => {
      if (s) thresholds.set(Math.floor(i / K), i % K, saved.thresholds!.values[i]);
    });
  }
}

/**
 * Checks that `run` reads on as the state was read: the same low tier (spec and budget), the same thin keys, and a
 * merger of the saved one's name when the state carries merger state.
 */
export function checkRun(run: ResolvedRun, s: Sections, refuse: (what: string) => TomeError): void {
  const low = run.lowTier;
  if (!!low !== !!s.low) {
    throw refuse(
      s.low ? "holds a low tier (--keep-evicted), the run keeps none" : "holds no low tier, the run keeps one",
    );
  }
  if (low && s.low) {
    const same = low.spec.bits === s.low.bits && low.spec.group === s.low.group && low.spec.params === s.low.params;
    if (!same || low.budget !== s.low.budget) {
      throw refuse(`holds a low tier of int${s.low.bits}, ${s.low.budget} entries a head; the run's differs`);
    }
  }
  const kc = run.keyChannels;
  if (s.thin && !kc) {
    throw refuse(`holds thin keys of ${s.thin.channels} channels (--key-channels), the run keeps whole keys`);
  }
  if (!s.thin && kc) throw refuse("holds whole keys, the run thins them (--key-channels)");
  if (kc && s.thin && (kc.channels !== s.thin.channels || kc.window !== s.thin.window)) {
    throw refuse(
      `holds thin keys of ${s.thin.channels} channels and a whole window of ${s.thin.window}; the run keeps ${kc.channels} and ${kc.window}`,
    );
  }
  const merger = run.plan.prefill.merge;
  if (s.merger && merger?.name !== s.merger.name) {
    throw refuse(`was merged by ${s.merger.name}, the run ${merger ? `merges by ${merger.name}` : "does not merge"}`);
  }
}
