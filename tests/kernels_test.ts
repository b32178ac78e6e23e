import assert from "node:assert/strict";
import { compactRows } from "../kernels/compact.ts";
import { avgPool1d, maxPool1d } from "../kernels/pool.ts";
import { normals, uniform } from "../kernels/random.ts";
import { argmax, descendingOrder, sample } from "../kernels/sample.ts";
import { topK } from "../kernels/topk.ts";
import { StopFilter } from "../core/engine/decode.ts";
import { select } from "../core/policies/select.ts";
import { Detokenizer } from "../core/tokens/detokenize.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { tempDir } from "./helpers.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";
import { mixedText } from "./fixture_text.ts";

/** Brute force: sort every index by (score desc, index desc), take k, ascending. */
function bruteTopK(s: ArrayLike<number>, k: number): number[] {
  const key = (i: number) => (Number.isNaN(s[i]) ? -Infinity : s[i]);
  return Array.from({ length: s.length }, (_, i) => i).sort((a, b) => key(b) - key(a) || b - a).slice(0, k).sort((
    a,
    b,
  ) => a - b);
}

Deno.test("topK equals a full sort, with ties to the later index and NaN lowest", () => {
  const r = uniform(3);
  for (let trial = 0; trial < 300; trial++) {
    const n = 1 + Math.floor(r() * 200);
    // few distinct values force many ties
    const s = Float32Array.from({ length: n }, () => (trial % 3 === 0 ? Math.floor(r() * 4) : r() < 0.05 ? NaN : r()));
    const k = Math.floor(r() * (n + 2));
    assert.deepEqual(Array.from(topK(s, n, k)), bruteTopK(s, Math.min(k, n)), `n=${n} k=${k}`);
  }
});

Deno.test("select keeps protected sinks and recent entries, top-k of the rest, in order", () => {
  const scores = Float32Array.from([9, 0, 5, 1, 8, 2, 7, 3, 0, 0]);
  assert.deepEqual(Array.from(select(scores, 10, 5, { sinks: 1, recent: 2 })), [0, 4, 6, 8, 9]);
  assert.deepEqual(Array.from(select(scores, 10, 20, { sinks: 1, recent: 2 })), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.deepEqual(Array.from(select(scores, 10, 3, { sinks: 0, recent: 0 })), [0, 4, 6]);
});

Deno.test("pooling: centred windows shrinking at the ends", () => {
  const x = Float32Array.from([1, 5, 2, 0, 0, 3, 0]);
  assert.deepEqual(Array.from(maxPool1d(x, 7, 3)), [5, 5, 5, 2, 3, 3, 3]);
  assert.deepEqual(Array.from(avgPool1d(x, 7, 3)), [3, 8 / 3, 7 / 3, 2 / 3, 1, 1, 1.5].map(Math.fround));
});

Deno.test("compactRows: in place and into a new buffer give the same rows", () => {
  const r = uniform(8);
  const d = 3, P = 6, S = 4, cap = 10;
  const past = normals(r, 2 * cap * d);
  const fresh = normals(r, 2 * S * d);
  const keep = Int32Array.from([0, 2, 3, 5, 6, 9]);
  const expected = (h: number) =>
    Array.from(
      keep,
      (i) =>
        Array.from(
          i < P
            ? past.subarray((h * cap + i) * d, (h * cap + i + 1) * d)
            : fresh.subarray((h * S + i - P) * d, (h * S + i - P + 1) * d),
        ),
    ).flat();
  const copy = new Float32Array(2 * 8 * d);
  const inPlace = past.slice();
  for (let h = 0; h < 2; h++) {
    compactRows(copy, h * 8, past, h * cap, P, fresh, h * S, keep, d);
    compactRows(inPlace, h * cap, inPlace, h * cap, P, fresh, h * S, keep, d);
    assert.deepEqual(Array.from(copy.subarray(h * 8 * d, (h * 8 + keep.length) * d)), expected(h));
    assert.deepEqual(Array.from(inPlace.subarray(h * cap * d, (h * cap + keep.length) * d)), expected(h));
  }
});

Deno.test("sample: greedy is argmax; top-k 1 and a tiny top-p are greedy; seeds repeat; penalty applies", () => {
  const r = uniform(4);
  const logits = normals(r, 50, 2);
  const best = argmax(logits);
  const opts = { temperature: 0.8, topK: 0, topP: 1, repetitionPenalty: 1 };
  assert.equal(sample(logits, { ...opts, temperature: 0 }, [], r), best);
  assert.equal(sample(logits, { ...opts, topK: 1 }, [], r), best);
  assert.equal(sample(logits, { ...opts, topP: 1e-9 }, [], r), best);
  const draw = (seed: number) => {
    const g = uniform(seed);
    return Array.from({ length: 20 }, () => sample(logits, opts, [], g));
  };
  assert.deepEqual(draw(1), draw(1));
  assert.notDeepEqual(draw(1), draw(2));
  const hist = [best];
  const penalized = sample(logits, { ...opts, temperature: 0, repetitionPenalty: 1e9 }, hist, r);
  assert.notEqual(penalized, best);
  // frequencies follow the softmax: the best token is drawn most often at low temperature
  const counts = new Map<number, number>();
  const g = uniform(11);
  for (let i = 0; i < 2000; i++) {
    const id = sample(logits, { ...opts, temperature: 0.3 }, [], g);
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  assert.equal([...counts].sort((a, b) => b[1] - a[1])[0][0], best);
});

Deno.test("sample: the radix order is the comparator sort's; draws equal those over the comparator sort", () => {
  const r = uniform(8);
  const bySort = (x: ArrayLike<number>) =>
    Int32Array.from({ length: x.length }, (_, i) => i).sort((a, b) => x[b] - x[a] || a - b);
  // ties, ±0, ±∞, subnormals, and plain arrays beside float32 ones
  const special = [-0, 0, Infinity, -Infinity, 1e-40, -1e-40, 3, 3, -3, 3];
  for (const n of [1, 7, 300, 5000]) {
    const x = Float32Array.from(
      { length: n },
      (_, i) => i < special.length ? special[i] : r() < 0.3 ? Math.round(r() * 8) - 4 : (r() - 0.5) * 40,
    );
    assert.deepEqual(descendingOrder(x), bySort(x), `float32, n = ${n}`);
    assert.deepEqual(descendingOrder(Array.from(x)), bySort(x), `plain array, n = ${n}`);
  }
  // sample() as it was, over the comparator sort: the same token for the same random numbers
  const restated = (x: Float32Array, o: { temperature: number; topK: number; topP: number }, random: () => number) => {
    let order = bySort(x);
    if (o.topK > 0 && o.topK < x.length) order = order.subarray(0, o.topK);
    const p = Array.from(order, (id) => Math.exp((x[id] - x[order[0]]) / o.temperature));
    const sum = p.reduce((a, b) => a + b, 0);
    let keep = p.length;
    for (let i = 0, acc = 0; i < p.length && o.topP < 1; i++) {
      acc += p[i] / sum;
      if (acc >= o.topP) {
        keep = i + 1;
        break;
      }
    }
    let rest = random() * p.slice(0, keep).reduce((a, b) => a + b, 0);
    for (let i = 0; i < keep; i++) if ((rest -= p[i]) < 0) return order[i];
    return order[keep - 1];
  };
  const logits = Float32Array.from(normals(r, 2000, 3), (v, i) => (i % 50 === 0 ? 2 : v));
  for (const o of [{ temperature: 0.7, topK: 0, topP: 1 }, { temperature: 0.2, topK: 40, topP: 0.9 }]) {
    const a = uniform(5), b = uniform(5);
    for (let i = 0; i < 200; i++) {
      assert.equal(sample(logits, { ...o, repetitionPenalty: 1 }, [], a), restated(logits, o, b), JSON.stringify(o));
    }
  }
});

Deno.test("StopFilter: cuts at the first stop string, holds back possible beginnings, releases them", () => {
  const f = new StopFilter(["</answer>", "\n\n"]);
  assert.deepEqual(f.push("The code is 4"), { text: "The code is 4", stopped: false });
  assert.deepEqual(f.push("8213</ans"), { text: "8213", stopped: false });
  assert.deepEqual(f.push("wer> tail"), { text: "", stopped: true });
  const g = new StopFilter(["STOP"]);
  assert.deepEqual(g.push("ST"), { text: "", stopped: false });
  assert.equal(g.flush("ay"), "STay");
});

Deno.test("Detokenizer: streamed text equals decoding everything at once, multi-byte characters whole", async () => {
  await using d = await tempDir();
  const tok = await loadTokenizer(await writeTestTokenizer(d.path));
  const text = mixedText(2, 3000);
  const ids = tok.encode(text);
  const det = new Detokenizer(tok);
  let out = "";
  for (const id of ids) {
    const piece = det.push(id);
    assert.ok(!piece.includes("\ufffd") || text.includes("\ufffd"), "no half characters");
    out += piece;
  }
  out += det.flush();
  assert.equal(out, tok.decode(ids, true));
});
