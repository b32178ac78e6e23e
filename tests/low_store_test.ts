/**
 * The low tier's store (core/engine/low_store.ts) against a restatement kept
 * as plain lists: after every admission each head holds the `budget` entries
 * with the most accumulated mass (ties: the newer), in position order, each
 * decoding to its own row quantized alone (keys balanced, then times b), with
 * arrivals interleaving old entries by position and the buffers growing.
 */
import assert from "node:assert/strict";
import { lowEntryBytes, LowStore, sameBytesBudget } from "../core/engine/low_store.ts";
import { lowCandidates } from "../core/engine/demote.ts";
import { KvStore } from "../core/engine/kv_store.ts";
import type { ModelConfig } from "../core/model/config.ts";
import { balanceKeys, dequantizeRows, type KvQuantSpec, quantizeRows } from "../kernels/kv_quant.ts";
import { normals } from "../kernels/random.ts";
import { rng } from "./helpers.ts";

interface Entry {
  pos: number;
  mass: number;
  seen: number;
  key: Float32Array;
  value: Float32Array;
}

const d = 16;
const K = 2;
const config = { layers: 2, kvHeads: K, headDim: d } as ModelConfig;

for (
  const spec of [{ bits: 4, group: 8, params: "float32" }, { bits: 2, group: 16, params: "float16" }] as KvQuantSpec[]
) {
  Deno.test(`low store int${spec.bits} ${spec.params}: keeps each head's most-attended entries in position order`, () => {
    const budget = (l: number, h: number) => 5 + l + 2 * h;
    const store = new LowStore(config, spec, budget);
    const r = rng(21 + spec.bits);
    const b = Array.from({ length: 2 }, () => new Float32Array(K * d).map(() => 0.5 + r()));
    b.forEach((x, l) => store.setBalance(l, x));
    const oracle: Entry[][][] = [[[], []], [[], []]];
    let nextPos = 0;
    const used = new Set<number>();
    for (let round = 0; round < 6; round++) {
      for (let l = 0; l < 2; l++) {
        // the low tier's own attention since the last admission
        const layer = store.layers[l];
        const all = new Float32Array(K * layer.capacity).map(() => r());
        store.accumulate(l, all, 3);
        for (let h = 0; h < K; h++) {
          oracle[l][h].forEach((e, i) => {
            e.mass = Math.fround(e.mass + all[h * layer.capacity + i]);
            e.seen += 3;
          });
        }
        for (let h = 0; h < K; h++) {
          const n = 1 + Math.floor(r() * 4);
          // positions interleave with what is held: some older than held entries (each position arrives once)
          const positions: number[] = [];
          while (positions.length < n) {
            const p = Math.floor(r() * (nextPos + 10));
            if (!used.has(p)) used.add(p), positions.push(p);
          }
          nextPos += 10;
          const keys = normals(r, n * d);
          const values = normals(r, n * d);
          // a tie in mass with a held entry now and then
          const accumulated = Array.from(
            { length: n },
            (_, i) => i === 0 && oracle[l][h].length ? oracle[l][h][0].mass : Math.fround(r() * 3),
          );
          const seen = positions.map((p) => p % 7);
          // promotion: some held entries leave (to the high tier) as others arrive
          const held = oracle[l][h].length;
          const leaving = new Uint8Array(held).map(() => (r() < 0.2 ? 1 : 0));
          store.admit(l, h, { keys, values, positions, accumulated, seen }, leaving);
          oracle[l][h] = oracle[l][h].filter((_, i) => !leaving[i]);
          for (let i = 0; i < n; i++) {
            oracle[l][h].push({
              pos: positions[i],
              mass: accumulated[i],
              seen: seen[i],
              key: keys.slice(i * d, (i + 1) * d),
              value: values.slice(i * d, (i + 1) * d),
            });
          }
          oracle[l][h] = oracle[l][h]
            .sort((x, y) => y.mass - x.mass || y.pos - x.pos)
            .slice(0, budget(l, h))
            .sort((x, y) => x.pos - y.pos);
        }
      }
      for (let l = 0; l < 2; l++) {
        const layer = store.layers[l];
        const cap = layer.capacity;
        const keys = dequantizeRows(layer.keys);
        const values = dequantizeRows(layer.values);
        for (let h = 0; h < K; h++) {
          const want = oracle[l][h];
          assert.equal(layer.lengths[h], want.length);
          const bh = b[l].subarray(h * d, (h + 1) * d);
          want.forEach((e, j) => {
            const slot = h * cap + j;
            assert.equal(layer.positions[slot], e.pos, `round ${round} layer ${l} head ${h} slot ${j}`);
            assert.ok(Math.abs(layer.accumulated[slot] - e.mass) < 1e-5);
            assert.equal(layer.seen[slot], e.seen);
            const k1 = dequantizeRows(quantizeRows(balanceKeys(e.key, 1, bh), 1, d, spec));
            const v1 = dequantizeRows(quantizeRows(e.value, 1, d, spec));
            assert.deepEqual(keys.subarray(slot * d, (slot + 1) * d), k1);
            assert.deepEqual(values.subarray(slot * d, (slot + 1) * d), v1);
          });
        }
      }
      const past = store.past();
      assert.deepEqual(Array.from(past.lengths), store.layers.flatMap((x) => Array.from(x.lengths)));
      assert.equal(store.bytes(), store.entries() * lowEntryBytes(d, spec));
    }
  });
}

Deno.test("low store: among entries of equal mass at the budget's cut, the newer stay", () => {
  const spec = { bits: 4, group: 8, params: "float32" } as KvQuantSpec;
  const store = new LowStore(config, spec, () => 3);
  const r = rng(5);
  const arrive = (positions: number[], mass: number[]) =>
    store.admit(0, 1, {
      keys: normals(r, positions.length * d),
      values: normals(r, positions.length * d),
      positions,
      accumulated: mass,
      seen: positions.map(() => 1),
    });
  arrive([10, 30, 50], [2, 1, 1]);
  // 20 and 40 tie with 30 and 50 (mass 1): of the four, the two newest (40, 50) stay beside 10 (mass 2)
  arrive([20, 40], [1, 1]);
  const layer = store.layers[0];
  assert.deepEqual(Array.from(layer.positions.subarray(layer.capacity, layer.capacity + 3)), [10, 40, 50]);
});

Deno.test("low store: the default budget fits the high tier's bytes; a balancer after entries is refused", () => {
  const spec: KvQuantSpec = { bits: 4, group: 32, params: "float16" };
  // d = 64 at f16: 256 bytes a high entry; int4: 2·(32 + 2·2·2) = 80 bytes a low one
  assert.equal(lowEntryBytes(64, spec), 80);
  assert.equal(sameBytesBudget(100, 64, 2, spec), Math.floor(25600 / 80));
  const store = new LowStore(config, { bits: 2, group: 8, params: "float32" }, () => 3);
  store.admit(0, 1, {
    keys: new Float32Array(d),
    values: new Float32Array(d),
    positions: [4],
    accumulated: [1],
    seen: [1],
  });
  assert.throws(() => store.setBalance(0, new Float32Array(K * d).fill(2)), /balancer/);
});

Deno.test("low candidates (f16 cache): a head's low keys come back as float32 values, dequantized times b", () => {
  const spec = { bits: 4, group: 8, params: "float16" } as KvQuantSpec;
  const low = new LowStore(config, spec, () => 6);
  const r = rng(5);
  const b = new Float32Array(K * d).map(() => 0.5 + r());
  low.setBalance(0, b);
  const n = 4;
  const keys = normals(r, n * d);
  low.admit(0, 1, {
    keys,
    values: normals(r, n * d),
    positions: [3, 5, 8, 9],
    accumulated: [1, 2, 3, 4],
    seen: [1, 1, 1, 1],
  });
  const store = new KvStore(config, "float16");
  const got = lowCandidates(store, low, 0, { newKeys: [], newValues: [], stats: {} }, 0, 0).keys(1);
  // the oracle: each row quantized alone from the balanced keys, dequantized, times b
  const want = dequantizeRows(quantizeRows(balanceKeys(keys, n, b.subarray(d, 2 * d)), n, d, spec));
  for (let i = 0; i < n * d; i++) {
    assert.equal(got[i], Math.fround(want[i] * b[d + (i % d)]), `entry ${Math.floor(i / d)} channel ${i % d}`);
  }
});
