/**
 * The retrieval model retrieves through the real loader, builder and engine;
 * the tokenizer the project learns is a usable tokenizer; `tome eval` runs
 * unchanged on a random model.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { projectText } from "../core/input/corpus.ts";
import { haystack, scoreAnswer, trialSeed } from "../core/eval/haystack.ts";
import { generate, loadModel, read } from "../core/mod.ts";
import { runNiah } from "../core/eval/niah.ts";
import { runPpl } from "../core/eval/ppl.ts";
import { logProb, teacherForce } from "../core/engine/score.ts";
import { summarizeNiah } from "../core/eval/summary.ts";
import { readConfig } from "../core/model/config.ts";
import { makeRetainingHeads } from "../core/model/make.ts";
import { makeRetrievalModel } from "../core/model/retrieval.ts";
import { needlePrompt } from "../recipes/needle.ts";
import { IncrementalEncoder } from "../core/tokens/stream.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { trainBpe } from "../core/tokens/train.ts";
import { mixedText } from "./fixture_text.ts";
import { CORPUS, hasShared, SMOLLM2_TOKENIZER, tome } from "./helpers.ts";

const root = await Deno.makeTempDir({ prefix: "tome-eval-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));

Deno.test("trainBpe: deterministic, round-trips any text, and streams exactly", async () => {
  const text = await projectText(300_000, 3);
  const a = trainBpe(text, 1200);
  const b = trainBpe(text, 1200);
  assert.deepEqual(a.tokenizerJson, b.tokenizerJson);
  assert.equal(a.vocabSize, 1200);
  const dir = join(root, "bpe");
  await Deno.mkdir(dir);
  await Deno.writeTextFile(join(dir, "tokenizer.json"), JSON.stringify(a.tokenizerJson));
  await Deno.writeTextFile(join(dir, "tokenizer_config.json"), JSON.stringify(a.tokenizerConfig));
  const tok = await loadTokenizer(dir);
  const sample = mixedText(4, 20_000);
  const ids = tok.encode(sample);
  assert.equal(tok.decode(ids), sample);
  assert.ok(ids.every((id) => id < 1200));
  assert.ok(tok.encode(text).length < text.length / 2, "merges compress the text they were learned from");
  const enc = new IncrementalEncoder(tok, { flushChars: 500, margin: 64, context: 32 });
  const streamed: number[] = [];
  for (let i = 0; i < sample.length; i += 333) streamed.push(...enc.push(sample.slice(i, i + 333)));
  streamed.push(...enc.end());
  assert.deepEqual(streamed, ids);
  assert.deepEqual(tok.encode("12345").length, 5, "digits are single tokens");
});

Deno.test("scoring: exact and partial matches of a five-digit code", () => {
  assert.deepEqual(scoreAnswer(" 48213.", "48213"), { digits: "48213", exact: true, partial: 1 });
  assert.deepEqual(scoreAnswer("It is 48 2 99", "48213"), { digits: "48299", exact: false, partial: 0.6 });
  assert.deepEqual(scoreAnswer("no idea", "48213").exact, false);
});

for (const kind of ["trained tokenizer", "SmolLM2 tokenizer"]) {
  Deno.test({
    name:
      `retrieval model (${kind}): the full cache and snapkv find the needle at every depth; streaming only in its window`,
    ignore: kind === "SmolLM2 tokenizer" && !hasShared,
    async fn() {
      const model = join(root, kind.split(" ")[0]);
      await makeRetrievalModel(model, { tokenizer: kind === "SmolLM2 tokenizer" ? SMOLLM2_TOKENIZER : undefined });
      const corpus = hasShared
        ? await Deno.readTextFile(join(CORPUS, "war_and_peace.txt"))
        : await projectText(1_000_000, 5);
      const rows = [];
      for await (
        const r of runNiah({
          model,
          frame: needlePrompt,
          policies: ["full", "snapkv", "streaming"],
          budgets: [256],
          lengths: [2048],
          depths: [0, 0.3, 0.6, 1],
          needles: 2,
          corpus,
          seed: 11,
          chunk: 256,
          kvDtype: "float16",
          positions: "auto",
        })
      ) rows.push(r);
      const s = Object.fromEntries(summarizeNiah(rows).map((x) => [x.policy, x]));
      assert.equal(s.full.recall, 1, JSON.stringify(rows.filter((r) => !r.exact && r.policy === "full")));
      assert.equal(s.snapkv.recall, 1);
      // streaming keeps 4 sinks and the last 252 entries: only the needle at depth 100% is inside
      const streaming = rows.filter((r) => r.policy === "streaming");
      assert.deepEqual(streaming.map((r) => r.exact), streaming.map((r) => r.depth === 1));
      assert.ok(s.snapkv.footprint < 0.4 && s.full.footprint === 1);
    },
  });
}

Deno.test("eval niah --keep-evicted: rows run MiKV's low tier, as a direct read with it does (bytes, answer)", async () => {
  const dir = join(root, "mikv-retrieval");
  await makeRetrievalModel(dir, { tokenizer: hasShared ? SMOLLM2_TOKENIZER : undefined });
  const corpus = hasShared ? await Deno.readTextFile(join(CORPUS, "war_and_peace.txt")) : await projectText(400_000, 6);
  const o = {
    model: dir,
    frame: needlePrompt,
    budgets: [24],
    lengths: [1024],
    depths: [0.5],
    needles: 1,
    corpus,
    seed: 5,
    chunk: 128,
    kvDtype: "float16" as const,
    positions: "auto" as const,
  };
  const rows = async (keepEvicted?: "int4") => {
    const out = [];
    for await (const r of runNiah({ ...o, policies: ["snapkv"], keepEvicted })) out.push(r);
    return out;
  };
  const [low] = await rows("int4");
  const [drop] = await rows();
  assert.equal(low.policy, "snapkv+int4");
  assert.equal(low.positions, "original");
  // the oracle: the same haystack and prompt read directly through the library with the low tier
  const model = await loadModel(dir, { positions: "original", kvDtype: "float16", lowTier: "int4" });
  try {
    const h = haystack(corpus, model.tokenizer, 1024, 0.5, trialSeed(5, 1024, 0.5, 0));
    const prompt = needlePrompt(model, h);
    const state = await read(h.text, {
      model,
      policy: "snapkv",
      budget: 24,
      chunk: 128,
      prefix: prompt.prefix,
      question: prompt.suffix,
      keepEvicted: "int4",
    });
    let answer = "";
    for await (const piece of generate(state, { suffix: prompt.suffix, maxTokens: 8, sampling: { temperature: 0 } })) {
      answer += piece;
    }
    assert.equal(low.answer, answer);
    const s = state.meter.summary();
    assert.equal(low.kv_peak_bytes, s.kvPeakBytes);
    assert.equal(low.kv_high_peak_bytes, s.kvHighPeakBytes);
    assert.equal(low.kv_low_peak_bytes, s.kvLowPeakBytes);
    assert.ok(s.kvLowPeakBytes > 0, "the low tier held entries");
  } finally {
    await model.session.close();
  }
  assert.ok(low.kv_peak_bytes > drop.kv_peak_bytes, `${low.kv_peak_bytes} vs drop-only ${drop.kv_peak_bytes}`);
  assert.equal(drop.kv_low_peak_bytes, 0);
});

Deno.test("eval ppl: merges, thin keys and the low tier at a size budget score as a direct read with them does", async () => {
  const dir = join(root, "ppl-retrieval");
  await makeRetrievalModel(dir, { tokenizer: hasShared ? SMOLLM2_TOKENIZER : undefined });
  const text = hasShared
    ? (await Deno.readTextFile(join(CORPUS, "war_and_peace.txt"))).slice(200_000, 206_000)
    : await projectText(6_000, 4);
  const budget = "192KiB", last = 64, chunk = 128;
  const o = {
    model: dir,
    policies: ["h2o"],
    budgets: [budget],
    chunk,
    kvDtype: "float16" as const,
    positions: "original" as const,
    text,
    last,
  };
  const rows = async (extra: Record<string, unknown>) => {
    const out = [];
    for await (const r of runPpl({ ...o, ...extra })) out.push(r);
    return out;
  };
  const merged = await rows({ merges: ["none", "d2o"] });
  const thin = await rows({ keyChannels: 0.5 });
  const low = await rows({ keepEvicted: "int4" });
  assert.deepEqual([...merged, ...thin, ...low].map((r) => r.policy), [
    "h2o",
    "h2o+d2o",
    "h2o+think0.5",
    "h2o+int4",
  ]);
  // the oracle: the prefix read through the library with each method, the last tokens teacher-forced
  const direct = async (extra: Record<string, unknown>, lowTier?: "int4") => {
    const load = (allLogits: boolean) =>
      loadModel(dir, {
        positions: "original",
        kvDtype: "float16",
        allLogits,
        queryEnergy: "keyChannels" in extra,
        ...(lowTier ? { lowTier } : {}),
      });
    const model = await load(false), scorer = await load(true);
    try {
      const ids = model.tokenizer.encode(text);
      const cut = ids.length - last - 1;
      const state = await read({ ids: ids.slice(0, cut) }, {
        model,
        policy: "h2o",
        budget,
        chunk,
        questionPatch: false,
        ...extra,
      });
      const scored = ids.slice(cut);
      let nll = 0;
      const rows: Float32Array[] = [];
      await teacherForce(state.sequence, scorer.session, scored, chunk, (row, i) => {
        if (i + 1 < scored.length) {
          nll -= logProb(row, scored[i + 1]);
          rows.push(row.slice());
        }
      });
      const s = state.meter.summary();
      return { nll: nll / last, peak: s.kvPeakBytes, high: s.kvHighPeakBytes, low: s.kvLowPeakBytes, rows };
    } finally {
      await model.session.close();
      await scorer.session.close();
    }
  };
  const near = (a: number, b: number, what: string) =>
    assert.ok(Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);
  for (
    const [row, want] of [
      [merged[1], await direct({ merge: "d2o" })],
      [thin[0], await direct({ keyChannels: 0.5 })],
      [low[0], await direct({ keepEvicted: "int4" }, "int4")],
    ] as const
  ) {
    assert.equal(row.nll, want.nll, `${row.policy}: nll`);
    assert.equal(row.kv_peak_bytes, want.peak, `${row.policy}: KV peak`);
    assert.deepEqual(
      [row.kv_high_peak_bytes, row.kv_low_peak_bytes],
      [want.high, want.low],
      `${row.policy}: tier peaks`,
    );
  }
  // KL(full ‖ row) per scored position, restated: log-softmax in float64 from the direct reads' rows
  const logSoftmax = (x: Float32Array) => {
    let m = -Infinity;
    for (const v of x) m = Math.max(m, v);
    let z = 0;
    for (const v of x) z += Math.exp(v - m);
    return Float64Array.from(x, (v) => v - m - Math.log(z));
  };
  const kl = (p: Float32Array[], q: Float32Array[]) =>
    p.reduce((sum, row, i) => {
      const a = logSoftmax(row), b = logSoftmax(q[i]);
      return sum + a.reduce((s, v, j) => s + Math.exp(v) * (v - b[j]), 0);
    }, 0) / p.length;
  const fullRows = (await direct({ policy: "full" })).rows;
  near(merged[0].kl, kl(fullRows, (await direct({})).rows), "h2o KL");
  near(merged[1].kl, kl(fullRows, (await direct({ merge: "d2o" })).rows), "h2o+d2o KL");
  assert.ok(merged[0].kl > 0);
  // each method changes what is scored (on this model SnapKV's merges change nothing: H2O is read)
  for (const r of [merged[1], thin[0], low[0]]) assert.notEqual(r.nll, merged[0].nll, `${r.policy} = drop-only`);
});

Deno.test("haystacks: the requested length in tokens, the needle near the requested depth", async () => {
  const tok = await loadTokenizer(hasShared ? SMOLLM2_TOKENIZER : join(root, "trained"));
  const corpus = await projectText(500_000, 9);
  // a corpus whose first part tokenizes far denser than the rest: the length is found on the slice itself
  const uneven = "0 1 2 3 4 5 6 7 8 9 ".repeat(1500) + corpus;
  for (
    const [text, length] of [[corpus, 4000], [corpus, 300], [uneven, 20_000], [corpus.slice(0, 5000), 4000]] as const
  ) {
    for (const depth of [0, 0.5, 1]) {
      const h = haystack(text, tok, length, depth, depth * 10 + length);
      const n = tok.encode(h.text).length;
      assert.ok(Math.abs(n - length) <= Math.max(4, 0.005 * length), `${n} tokens for ${length}`);
      assert.equal(h.text.split(h.needle.fact).length, 2, "the fact appears once");
      assert.ok(Math.abs(h.placed - depth) < 0.05, `placed at ${h.placed} for ${length}`);
    }
  }
});

Deno.test("tome eval runs unchanged on a random make-model checkpoint: niah, curve, ppl, fidelity", async () => {
  const tok = hasShared ? SMOLLM2_TOKENIZER : join(root, "trained");
  const tiny = join(root, "tiny");
  const env = { TOME_CACHE: join(root, "cache") };
  assert.equal((await tome(["make-model", "tiny", "--out", tiny, "-t", tok], { env })).code, 0);
  const out = join(root, "eval-out");
  const corpus = join(root, "corpus.txt");
  await Deno.writeTextFile(corpus, await projectText(200_000, 1));
  const common = ["-m", tiny, "--corpus", corpus, "--out", out, "--quiet"];
  const niah = await tome(["eval", "niah", ...common, "--lengths", "512", "--depths", "0,100", "--budget", "128"], {
    env,
  });
  assert.equal(niah.code, 0, niah.stderr);
  assert.match(niah.stdout, /^policy\s+budget\s+trials\s+recall/m);
  assert.match(niah.stdout, /^snapkv\s+128\s+2\s+/m);
  for (const f of ["niah-heatmap.svg", "niah-heatmap.png", "results.jsonl"]) {
    assert.ok((await Deno.stat(join(out, f))).size > 0, f);
  }
  const png = await Deno.readFile(join(out, "niah-heatmap.png"));
  assert.deepEqual(Array.from(png.subarray(1, 4)), [0x50, 0x4e, 0x47]); // "PNG"
  const lines = (await Deno.readTextFile(join(out, "results.jsonl"))).trim().split("\n").map((l) => JSON.parse(l));
  assert.equal(lines.length, 6); // 2 depths × (full + snapkv + streaming)
  assert.ok(lines.every((l) => l.kind === "niah" && typeof l.result.footprint === "number"));
  const curve = await tome([
    "eval",
    "curve",
    ...common,
    "--lengths",
    "512",
    "--depths",
    "50",
    "--budget",
    "64,256",
    "--policy",
    "snapkv,h2o",
    "--json",
  ], { env });
  assert.equal(curve.code, 0, curve.stderr);
  const c = JSON.parse(curve.stdout);
  assert.deepEqual(Object.keys(c.critical).sort(), ["full", "h2o", "snapkv"]);
  const short = join(root, "short.txt");
  await Deno.writeTextFile(short, (await Deno.readTextFile(corpus)).slice(0, 12_000));
  const pplArgs = ["eval", "ppl", ...common, "--text", short, "--last", "64", "--budget", "128", "--json"];
  const noHeads = await tome([...pplArgs, "--policy", "full,locret"], { env });
  assert.equal(noHeads.code, 2);
  assert.match(noHeads.stderr, /^tome: --policy locret needs --retaining-heads FILE\n$/);
  const heads = join(root, "retaining.safetensors");
  await makeRetainingHeads(heads, await readConfig(tiny));
  const ppl = await tome([...pplArgs, "--policy", "full,snapkv,locret", "--retaining-heads", heads], { env });
  assert.equal(ppl.code, 0, ppl.stderr);
  const pplRows = JSON.parse(ppl.stdout).rows;
  assert.deepEqual(pplRows.map((r: { policy: string }) => r.policy), ["full", "snapkv", "locret"]);
  assert.ok(pplRows.every((r: { ppl: number }) => Number.isFinite(r.ppl) && r.ppl > 1));
  const fid = await tome([
    "eval",
    "fidelity",
    ...common,
    "--lengths",
    "512",
    "--depths",
    "50",
    "--budget",
    "128",
    "--json",
  ], { env });
  assert.equal(fid.code, 0, fid.stderr);
  const fidRows: { kl: number; footprint: number; peak_fraction: number }[] = JSON.parse(fid.stdout).rows;
  assert.ok(fidRows.length > 0 && fidRows.every((r) => r.kl >= 0));
  // a 512-token haystack fits in one chunk: eviction comes after it, and the question patch's entries can
  // lift the peak above the full cache's (which reads without the patch)
  assert.ok(
    fidRows.every((r) => r.footprint > 0 && r.footprint <= 1 && r.peak_fraction > 0.9),
    JSON.stringify(fidRows),
  );
});

Deno.test({ name: "cleanup eval test files", fn: () => Deno.remove(root, { recursive: true }) });
