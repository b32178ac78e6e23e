/**
 * The engine at SmolLM2-360M shape (random weights, SmolLM2 tokenizer) over the
 * shared corpus:
 *   --part fraction  64K tokens with snapkv at budget 1024: time scoring, selecting and
 *                    compacting as a fraction of prefill (target ≤ 5%)
 *   --part prefill   prefill tokens/s, full vs snapkv, at 8K tokens
 *   --part decode    decode tokens/s at budget 1024 vs 4096
 *   --part chunks    prefill tokens/s by chunk size (how the default chunk was chosen)
 *   --part merge     snapkv at budget 1024 with each --merge method: the extra time per chunk
 *                    (similarity search and averaging) as a share of prefill, at --tokens, each
 *                    read right after its drop-only twin (--merges LIST: which methods, default
 *                    d2o,kvmerger,anchors; also `ems` = --policy ems against --policy ems --merge drop,
 *                    and `int4`/`int2` = snapkv --keep-evicted against snapkv)
 *   --part search    the mergers' work for one chunk at the model's KV shape (random keys, no model run):
 *                    D2O and EMS searching in JS against the batched onnxruntime search
 *   --part at4k      prefill tokens/s over 4K tokens with snapkv at budget 1024, then decode tokens/s
 *                    (32 tokens), and the peak RSS: run once per weight type (own process, own peak)
 *   --weights TYPE   the graph's weight type (auto, f32, f16, bf16, q8, q4; default auto)
 *
 *   deno run -A --v8-flags=--optimize-for-size bench/engine.ts --part all [--size 360m] [--tokens 65536]
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { join } from "node:path";
import { generate, type LoadedModel, loadModel, read, type ReadOptions, type ReadState } from "../core/mod.ts";
import { rss } from "../core/meter/rss.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { report, type Row } from "./report.ts";
import { ensureRandomModel } from "./setup.ts";
import type { WeightChoice } from "../core/model/onnx/decoder.ts";
import type { LowTier } from "../core/model/onnx/low_tier.ts";
import { nearestAll } from "../core/model/onnx/similarity.ts";
import { type MergeHead, MERGERS } from "../core/policies/merge/mod.ts";
import { uniform } from "../kernels/random.ts";

const { values: args } = parseArgs({
  options: {
    part: { type: "string", default: "all" },
    size: { type: "string", default: "360m" },
    tokens: { type: "string", default: "65536" },
    threads: { type: "string" },
    merges: { type: "string", default: "d2o,kvmerger,anchors" },
    weights: { type: "string", default: "auto" },
  },
});
const parts = args.part === "all" ? ["fraction", "prefill", "decode", "chunks"] : args.part!.split(",");
const root = join(import.meta.dirname!, "results", "engine");
const shared = join(import.meta.dirname!, "..", "..", "shared");
Deno.env.set("TOME_CACHE", join(root, "cache"));
const modelDir = join(root, `random-${args.size}`);
const tokenizerDir = join(shared, "fixtures", "smollm2-tokenizer");
await ensureRandomModel(modelDir, args.size!);
const tok = await loadTokenizer(tokenizerDir);
const book = Int32Array.from(tok.encode(await Deno.readTextFile(join(shared, "corpus", "war_and_peace.txt"))));
const question = tok.encode("What is the pass code of Natasha?");
const load = (lowTier?: LowTier) =>
  loadModel(modelDir, {
    threads: args.threads ? Number(args.threads) : undefined,
    weights: args.weights as WeightChoice,
    ...(lowTier ? { lowTier } : {}),
  });
const model: LoadedModel = await load();
/** The same model with a graph that takes MiKV's low tier (`--keep-evicted`), loaded when first asked for. */
const lowModels = new Map<LowTier, Promise<LoadedModel>>();
const modelFor = (tier?: LowTier) => {
  if (!tier) return Promise.resolve(model);
  if (!lowModels.has(tier)) lowModels.set(tier, load(tier));
  return lowModels.get(tier)!;
};

async function timedRead(
  n: number,
  policy: string,
  budget: number,
  chunk = 512,
  merge?: string,
  more: Partial<ReadOptions> = {},
): Promise<[ReadState, number]> {
  const t0 = performance.now();
  const state = await read(
    { ids: book.subarray(0, n) },
    { model: await modelFor(more.keepEvicted), policy, budget, chunk, question, merge, ...more },
  );
  return [state, (performance.now() - t0) / 1000];
}

const rows: Row[] = [];
const label =
  `${args.size} (${model.config.layers} layers, hidden ${model.config.hidden}), ${model.graph.weights} weights`;
if (parts.includes("fraction")) {
  const n = Number(args.tokens);
  const [state, seconds] = await timedRead(n, "snapkv", 1024);
  const t = state.sequence.timings;
  rows.push({
    part: "eviction share of prefill",
    model: label,
    tokens: n,
    policy: "snapkv b=1024 c=512",
    prefill_s: seconds,
    model_runs_s: t.run,
    score_select_compact_s: t.evict,
    evict_fraction: t.evict / seconds,
    prefill_tok_s: Math.round(n / seconds),
    peak_rss_mb: Math.round(rss().peak / 1e6),
  });
}
if (parts.includes("merge")) {
  const n = Number(args.tokens);
  const chunks = Math.ceil(n / 512);
  /** A method's read options and its drop-only baseline's: same policy, same budget, evicted entries dropped. */
  const variants = (m: string): [Partial<ReadOptions>, Partial<ReadOptions>] =>
    m === "ems"
      ? [{ policy: "ems" }, { policy: "ems", merge: "drop" }]
      : m === "int4" || m === "int2"
      ? [{ policy: "snapkv", keepEvicted: m as LowTier }, { policy: "snapkv" }]
      : [{ policy: "snapkv", merge: m }, { policy: "snapkv" }];
  // warm-up: the first read pays for compiling the code it runs
  for (const m of args.merges!.split(",")) await timedRead(1536, "snapkv", 1024, 512, undefined, variants(m)[0]);
  for (const m of args.merges!.split(",")) {
    const [withIt, dropOnly] = variants(m);
    // the drop-only read runs right before the method's, so both see the same load on a shared machine
    const [base, baseSeconds] = await timedRead(n, "snapkv", 1024, 512, undefined, dropOnly);
    const [state, seconds] = await timedRead(n, "snapkv", 1024, 512, undefined, withIt);
    const t = state.sequence.timings, b = base.sequence.timings;
    const extra = t.evict - b.evict;
    rows.push({
      part: "merge share of prefill",
      model: label,
      tokens: n,
      method: m === "ems"
        ? "--policy ems (vs --merge drop)"
        : m.startsWith("int")
        ? `--keep-evicted ${m}`
        : `--merge ${m}`,
      budget: "b=1024 c=512",
      prefill_s: seconds,
      drop_only_prefill_s: baseSeconds,
      model_runs_s: t.run,
      drop_only_model_runs_s: b.run,
      evict_s: t.evict,
      drop_only_evict_s: b.evict,
      extra_ms_per_chunk: Math.round((extra / chunks) * 1000),
      // the work added after each run (search, merge, quantize, bookkeeping) as a share of this prefill
      extra_work_share: Number((extra / seconds).toFixed(4)),
      // the whole prefill against drop-only (for the low tier this includes the graph's attention over both tiers)
      prefill_increase: Number((seconds / baseSeconds - 1).toFixed(4)),
      load_1min: Number(Deno.loadavg()[0].toFixed(2)),
    });
  }
}
if (parts.includes("search")) {
  // one chunk's merge work at the model's KV shape, without the model: every layer's heads hold budget 1024 + a
  // chunk of 512 random keys; each merger merges searching itself in JS, then with the batched search
  const { layers: L, kvHeads: K, headDim: d } = model.config;
  const n = 1536, kept = 1024, reps = 1;
  const r = uniform(7);
  const heads = Array.from({ length: L * K }, (_, i): MergeHead => {
    const keys = Float32Array.from({ length: n * d }, () => r() * 2 - 1);
    const keep = Int32Array.from(
      Array.from({ length: n }, (_, j) => j).sort(() => r() - 0.5).slice(0, kept).sort((a, b) => a - b),
    );
    return {
      layer: Math.floor(i / K),
      head: i % K,
      n,
      d,
      keys,
      values: keys.slice(),
      keep,
      protect: { sinks: 0, recent: 0 },
      positions: Int32Array.from({ length: n }, (_, j) => j),
      importance: Float32Array.from({ length: n }, () => r()),
    };
  });
  const copy = (h: MergeHead): MergeHead => ({ ...h, keys: h.keys.slice(), values: h.values.slice() });
  for (const name of ["d2o", "ems"]) {
    const times = { js: 0, batched: 0 };
    for (let rep = 0; rep <= reps; rep++) {
      let t = performance.now();
      const js = MERGERS[name]();
      for (const h of heads) js.merge(copy(h));
      const jsMs = performance.now() - t;
      t = performance.now();
      const fast = MERGERS[name]();
      for (let l = 0; l < L; l++) {
        const layer = heads.slice(l * K, (l + 1) * K).map(copy);
        const found = await nearestAll(layer.map((h) => fast.search!(h)!), d);
        layer.forEach((h, k) => fast.merge({ ...h, nearest: found[k] }));
      }
      const batchedMs = performance.now() - t;
      if (rep > 0) times.js += jsMs / reps, times.batched += batchedMs / reps; // the first is a warm-up
    }
    rows.push({
      part: "merge work per chunk (random keys, no model)",
      model: label,
      method: name,
      shape: `${L} layers × ${K} KV heads, ${kept} kept + ${n - kept} new, d=${d}`,
      js_search_ms_per_chunk: Math.round(times.js),
      batched_search_ms_per_chunk: Math.round(times.batched),
      speedup: Number((times.js / times.batched).toFixed(1)),
      load_1min: Number(Deno.loadavg()[0].toFixed(2)),
    });
  }
}
if (parts.includes("prefill")) {
  for (const policy of ["full", "snapkv"]) {
    const [state, seconds] = await timedRead(8192, policy, 1024);
    rows.push({
      part: "prefill at 8K tokens",
      model: label,
      tokens: 8192,
      policy: policy === "full" ? "full" : "snapkv b=1024 c=512",
      prefill_s: seconds,
      prefill_tok_s: Math.round(8192 / seconds),
      kv_peak_mb: Math.round(state.meter.summary().kvPeakBytes / 1e6),
    });
  }
}
if (parts.includes("decode")) {
  for (const budget of [1024, 4096]) {
    const [state] = await timedRead(budget + 1024, "snapkv", budget);
    const suffix = question;
    let n = 0;
    let first = 0;
    const t0 = performance.now();
    for await (const _ of generate(state, { suffix, maxTokens: 33, sampling: { temperature: 0 }, eos: [] })) {
      if (n++ === 0) first = performance.now();
    }
    const generated = state.meter.summary().generatedTokens;
    const seconds = (performance.now() - first) / 1000;
    rows.push({
      part: "decode",
      model: label,
      policy: `snapkv b=${budget}`,
      suffix_and_first_token_s: (first - t0) / 1000,
      decode_tok_s: Number(((generated - 1) / seconds).toFixed(2)),
      kv_mb: Math.round(state.meter.summary().kvBytes / 1e6),
    });
  }
}
if (parts.includes("at4k")) {
  const cpu = () => (process.cpuUsage().user + process.cpuUsage().system) / 1e6;
  const c0 = cpu();
  const [state, seconds] = await timedRead(4096, "snapkv", 1024);
  const prefillCpu = cpu() - c0;
  let n = 0;
  let first = 0;
  let c1 = 0;
  for await (const _ of generate(state, { suffix: question, maxTokens: 33, sampling: { temperature: 0 }, eos: [] })) {
    if (n++ === 0) {
      first = performance.now();
      c1 = cpu();
    }
  }
  const decodeCpu = cpu() - c1;
  const cores = args.threads ? Number(args.threads) : navigator.hardwareConcurrency;
  const generated = state.meter.summary().generatedTokens;
  rows.push({
    part: "4K tokens, snapkv b=1024",
    model: label,
    prefill_tok_s: Math.round(4096 / seconds),
    evict_fraction: state.sequence.timings.evict / seconds,
    decode_tok_s: Number(((generated - 1) / ((performance.now() - first) / 1000)).toFixed(2)),
    // CPU seconds of the work, and the rate on otherwise idle cores (the machine is shared)
    prefill_cpu_s: prefillCpu,
    prefill_tok_s_cpu_bound: Math.round((4096 * cores) / prefillCpu),
    decode_tok_s_cpu_bound: Number((((generated - 1) * cores) / decodeCpu).toFixed(2)),
    peak_rss_mb: Math.round(rss().peak / 1e6),
  });
}
if (parts.includes("chunks")) {
  for (const chunk of [128, 256, 512, 1024]) {
    const [, seconds] = await timedRead(4096, "snapkv", 1024, chunk);
    rows.push({
      part: "chunk size",
      model: label,
      tokens: 4096,
      policy: `snapkv b=1024 c=${chunk}`,
      prefill_tok_s: Math.round(4096 / seconds),
    });
  }
}
await report(
  `engine-${args.size}-${parts.join("+")}${args.weights === "auto" ? "" : `-${args.weights}`}`,
  `deno run -A --v8-flags=--optimize-for-size bench/engine.ts ${Deno.args.join(" ")}`.trim(),
  rows,
);
