/**
 * The engine at SmolLM2-360M shape (random weights, SmolLM2 tokenizer) over the
 * shared corpus:
 *   --part fraction  64K tokens with snapkv at budget 1024: time scoring, selecting and
 *                    compacting as a fraction of prefill (target ≤ 5%)
 *   --part prefill   prefill tokens/s, full vs snapkv, at 8K tokens
 *   --part decode    decode tokens/s at budget 1024 vs 4096
 *   --part chunks    prefill tokens/s by chunk size (how the default chunk was chosen)
 *   --part merge     snapkv at budget 1024 with each --merge method: the extra time per chunk
 *                    (similarity search and averaging) as a share of prefill, at --tokens
 *
 *   deno run -A --v8-flags=--optimize-for-size bench/engine.ts --part all [--size 360m] [--tokens 65536]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { generate, type LoadedModel, loadModel, read, type ReadState } from "../core/mod.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { rss } from "../core/meter/rss.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { report, type Row } from "./report.ts";

const { values: args } = parseArgs({
  options: {
    part: { type: "string", default: "all" },
    size: { type: "string", default: "360m" },
    tokens: { type: "string", default: "65536" },
    threads: { type: "string" },
  },
});
const parts = args.part === "all" ? ["fraction", "prefill", "decode", "chunks"] : args.part!.split(",");
const root = join(import.meta.dirname!, "results", "engine");
const shared = join(import.meta.dirname!, "..", "..", "shared");
Deno.env.set("TOME_CACHE", join(root, "cache"));
const modelDir = join(root, `random-${args.size}`);
const tokenizerDir = join(shared, "fixtures", "smollm2-tokenizer");
if (!(await Deno.stat(join(modelDir, "config.json")).then(() => true, () => false))) {
  await makeRandomModel(modelDir, {
    arch: "llama",
    shape: SIZES[args.size!],
    seed: 0,
    dtype: "BF16",
    tokenizer: tokenizerDir,
  });
}
const tok = await loadTokenizer(tokenizerDir);
const book = Int32Array.from(tok.encode(await Deno.readTextFile(join(shared, "corpus", "war_and_peace.txt"))));
const question = tok.encode("What is the pass code of Natasha?");
const model: LoadedModel = await loadModel(modelDir, { threads: args.threads ? Number(args.threads) : undefined });

async function timedRead(
  n: number,
  policy: string,
  budget: number,
  chunk = 512,
  merge?: string,
): Promise<[ReadState, number]> {
  const t0 = performance.now();
  const state = await read({ ids: book.subarray(0, n) }, { model, policy, budget, chunk, question, merge });
  return [state, (performance.now() - t0) / 1000];
}

const rows: Row[] = [];
const label = `${args.size} (${model.config.layers} layers, hidden ${model.config.hidden})`;
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
  const [base] = await timedRead(n, "snapkv", 1024);
  const chunks = Math.ceil(n / 512);
  for (const merge of ["d2o", "kvmerger", "anchors"]) {
    const [state, seconds] = await timedRead(n, "snapkv", 1024, 512, merge);
    const extra = state.sequence.timings.evict - base.sequence.timings.evict;
    rows.push({
      part: "merge share of prefill",
      model: label,
      tokens: n,
      policy: `snapkv+${merge} b=1024 c=512`,
      prefill_s: seconds,
      evict_s: state.sequence.timings.evict,
      evict_drop_only_s: base.sequence.timings.evict,
      merge_ms_per_chunk: Math.round((extra / chunks) * 1000),
      merge_fraction: extra / seconds,
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
  `engine-${args.size}-${parts.join("+")}`,
  `deno run -A --v8-flags=--optimize-for-size bench/engine.ts ${Deno.args.join(" ")}`.trim(),
  rows,
);
