/**
 * What the merge tests share: a head's entries read back from the KV store as
 * numbers, and a walk through random chunks that hands each head's entries
 * before and after every chunk to a restated merge and checks the store
 * against it.
 */
import assert from "node:assert/strict";
import { KvStore } from "../core/engine/kv_store.ts";
import type { EvictionRule } from "../core/engine/plan.ts";
import { Sequence } from "../core/engine/sequence.ts";
import { Meter } from "../core/meter/meter.ts";
import type { LoadedModel } from "../core/mod.ts";
import { kvBytesPerToken, type KvDtype } from "../core/model/config.ts";
import type { KvArray } from "../core/model/session.ts";
import { fromF16Bits } from "../kernels/fp16.ts";
import { rng } from "./helpers.ts";

export type Vec = number[];

/** One element of a KV buffer as a number (f16 bits widened). */
export const value = (a: KvArray, i: number) => (a instanceof Float32Array ? a[i] : fromF16Bits(a[i]));

/** One head's retained entries: positions, keys, values, accumulated attention and the queries that saw each. */
export interface Entries {
  pos: number[];
  k: Vec[];
  v: Vec[];
  acc: number[];
  seen: number[];
}

/** Layer `l`, KV head `h` of a store, as numbers. */
export function headEntries(store: KvStore, l: number, h: number): Entries {
  const c = store.layers[l], d = store.config.headDim, base = h * c.capacity;
  const e: Entries = { pos: [], k: [], v: [], acc: [], seen: [] };
  for (let i = 0; i < c.lengths[h]; i++) {
    e.pos.push(c.positions[base + i]);
    e.acc.push(c.accumulated[base + i]);
    e.seen.push(c.seen[base + i]);
    e.k.push(Array.from({ length: d }, (_, t) => value(c.keys, (base + i) * d + t)));
    e.v.push(Array.from({ length: d }, (_, t) => value(c.values, (base + i) * d + t)));
  }
  return e;
}

/** What the walk hands a restated merge for one head after one chunk. */
export interface HeadStep {
  step: number;
  l: number;
  h: number;
  /** The head's entries before the chunk, then the chunk's new ones: what the merge chose from. */
  all: { pos: number[]; k: Vec[]; v: Vec[] };
  /** The head's entries after the chunk. */
  after: Entries;
}

/**
 * Reads `chunks` random chunks of `chunk` tokens under `rule` and, after each,
 * checks every head's kept keys and values against `expect` (the kept
 * entries' K/V by position; relative tolerance 1e-5, 4e-3 at f16). Returns how
 * many kept entries differed from the entry as read (merged into).
 */
export async function walkMerges(
  model: LoadedModel,
  kvDtype: KvDtype,
  rule: EvictionRule,
  o: { chunk: number; chunks: number; window: number; seed: number },
  expect: (s: HeadStep) => Map<number, { k: Vec; v: Vec }>,
): Promise<number> {
  const { config } = model;
  const d = config.headDim;
  const seq = new Sequence(model.session, new KvStore(config, kvDtype), new Meter(kvBytesPerToken(config, 4)));
  const r = rng(o.seed);
  const tol = kvDtype === "float32" ? 1e-5 : 4e-3;
  let merged = 0;
  for (let step = 0; step < o.chunks; step++) {
    const ids = Array.from({ length: o.chunk }, () => 4 + Math.floor(r() * 300));
    const before = seq.store.clone();
    const start = seq.position;
    const result = await seq.step(ids, rule, { window: o.window });
    for (let l = 0; l < config.layers; l++) {
      for (let h = 0; h < config.kvHeads; h++) {
        const past = headEntries(before, l, h);
        const fresh = (a: KvArray) =>
          Array.from(
            { length: o.chunk },
            (_, j) => Array.from({ length: d }, (_, t) => value(a, (h * o.chunk + j) * d + t)),
          );
        const all = {
          pos: [...past.pos, ...ids.map((_, j) => start + j)],
          k: [...past.k, ...fresh(result.newKeys[l])],
          v: [...past.v, ...fresh(result.newValues[l])],
        };
        const after = headEntries(seq.store, l, h);
        const want = expect({ step, l, h, all, after });
        after.pos.forEach((pos, i) => {
          const w = want.get(pos)!;
          const orig = all.pos.indexOf(pos);
          if (w.k.some((x, t) => x !== all.k[orig][t])) merged++;
          for (let t = 0; t < d; t++) {
            const at = `step ${step} layer ${l} head ${h} position ${pos} [${t}]`;
            assert.ok(Math.abs(after.k[i][t] - w.k[t]) <= tol * (1 + Math.abs(w.k[t])), `key ${at}`);
            assert.ok(Math.abs(after.v[i][t] - w.v[t]) <= tol * (1 + Math.abs(w.v[t])), `value ${at}`);
          }
        });
      }
    }
  }
  return merged;
}
