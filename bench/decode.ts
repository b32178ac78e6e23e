/**
 * Decode at the 360M shape (random weights, SmolLM2 tokenizer, the shared
 * corpus), where its time goes per token:
 *   engine  generated tokens after reading the book's first --tokens tokens with each --runs policy
 *           (full: every entry; snapkv/h2o at budget 1024, h2o evicting while generating at a decode
 *           budget of 1024, so it fetches statistics at every token): ms per token in all, in
 *           `ModelSession.run` and in onnxruntime's own `run` (the rest of `ModelSession.run` is
 *           building feeds and reading outputs; the rest of the token is sampling, detokenizing,
 *           the meter and appending to the cache). Medians over --reps forks of one read.
 *   step    one decode step over --past retained entries, with and without the statistics fetched
 *           (ms per step, and the difference per layer), interleaved --reps times, medians.
 *
 *   deno run -A bench/decode.ts [--part engine,step] [--tokens 4096] [--reps 5] [--weights f32] [--threads N]
 *
 * On a shared machine wall times follow the load; CPU times (with --threads 1, no spinning worker
 * threads) follow the work.
 *
 * Writes one JSON line per row to stdout (and the report under bench/results/).
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { join } from "node:path";
import { fork, generate, type LoadedModel, loadModel, read, type ReadState } from "../core/mod.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import type { ModelSession } from "../core/model/session.ts";
import type { WeightChoice } from "../core/model/onnx/decoder.ts";
import { report, type Row } from "./report.ts";

const { values: args } = parseArgs({
  options: {
    part: { type: "string", default: "engine,step" },
    size: { type: "string", default: "360m" },
    tokens: { type: "string", default: "4096" },
    past: { type: "string", default: "1024,4096" },
    runs: { type: "string", default: "full,snapkv,h2o" },
    reps: { type: "string", default: "5" },
    decode: { type: "string", default: "33" },
    weights: { type: "string", default: "f32" },
    threads: { type: "string" },
  },
});
const parts = args.part!.split(",");
const reps = Number(args.reps);
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
const model: LoadedModel = await loadModel(modelDir, {
  weights: args.weights as WeightChoice,
  threads: args.threads ? Number(args.threads) : undefined,
});
const L = model.config.layers;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const round = (x: number, digits = 2) => Number(x.toFixed(digits));
const load = () => Deno.loadavg()[0];
/** CPU milliseconds of this process (all threads): the work, whatever else the machine runs. */
const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

/** Times onnxruntime's own `run` inside a ModelSession (its private session object). */
function timeOrt(session: ModelSession): { ms: number } {
  const inner = (session as unknown as { session: { run: (...a: unknown[]) => Promise<unknown> } }).session;
  const clock = { ms: 0 };
  const run = inner.run.bind(inner);
  inner.run = async (...a: unknown[]) => {
    const t = performance.now();
    try {
      return await run(...a);
    } finally {
      clock.ms += performance.now() - t;
    }
  };
  return clock;
}
const ortClock = timeOrt(model.session);

const rows: Row[] = [];
const emit = (row: Row) => {
  console.log(JSON.stringify(row));
  rows.push(row);
};

if (parts.includes("engine")) {
  const n = Number(args.tokens);
  const settings: Record<string, { policy: string; budget: number; decodeBudget?: number; tokens: number }> = {
    full: { policy: "full", budget: n, tokens: n },
    snapkv: { policy: "snapkv", budget: 1024, tokens: n },
    h2o: { policy: "h2o", budget: 1024, decodeBudget: 1024, tokens: n },
  };
  for (const name of args.runs!.split(",")) {
    const s = settings[name];
    const state: ReadState = await read({ ids: book.subarray(0, s.tokens) }, {
      model,
      policy: s.policy,
      budget: s.budget,
      decodeBudget: s.decodeBudget,
      question,
    });
    const per = { token: [] as number[], session: [] as number[], ort: [] as number[], cpu: [] as number[] };
    for (let r = 0; r < reps + 1; r++) {
      const st = fork(state);
      let first = 0, run0 = 0, ort0 = 0, cpu0 = 0, n = 0;
      for await (
        const _ of generate(st, {
          suffix: question,
          maxTokens: Number(args.decode),
          sampling: { temperature: 0 },
          eos: [],
        })
      ) {
        if (n++ === 0) {
          first = performance.now();
          run0 = st.sequence.timings.run;
          ort0 = ortClock.ms;
          cpu0 = cpu();
        }
      }
      const tokens = st.meter.summary().generatedTokens - 1;
      if (r === 0) continue; // warm-up
      per.token.push((performance.now() - first) / tokens);
      per.session.push(((st.sequence.timings.run - run0) * 1000) / tokens);
      per.ort.push((ortClock.ms - ort0) / tokens);
      per.cpu.push((cpu() - cpu0) / tokens);
    }
    emit({
      part: "engine decode",
      run: `${s.policy} b=${s.budget}${s.decodeBudget ? ` decode b=${s.decodeBudget}` : ""} over ${s.tokens} tokens`,
      entries: Math.round(state.sequence.meanEntries()),
      ms_per_token: round(median(per.token)),
      session_run_ms: round(median(per.session)),
      ort_run_ms: round(median(per.ort)),
      feeds_outputs_ms: round(median(per.session) - median(per.ort)),
      engine_rest_ms: round(median(per.token) - median(per.session)),
      tok_s: round(1000 / median(per.token)),
      cpu_ms_per_token: round(median(per.cpu)),
      load1: round(load()),
    });
  }
}

if (parts.includes("step")) {
  const c = model.config;
  for (const P of args.past!.split(",").map(Number)) {
    const fill = () => Float32Array.from({ length: c.kvHeads * P * c.headDim }, (_, i) => (i % 97) / 97 - 0.5);
    const past = {
      keys: Array.from({ length: L }, fill),
      values: Array.from({ length: L }, fill),
      lengths: new Array(L * c.kvHeads).fill(P),
    };
    const step = async (stats: boolean) => {
      const o0 = ortClock.ms;
      const c0 = cpu();
      const t = performance.now();
      await model.session.run({
        ids: [42],
        positions: [P],
        past,
        windowStart: 0,
        fetch: { logits: true, kv: true, stats: stats ? ["all"] : [] },
      });
      return { ms: performance.now() - t, ort: ortClock.ms - o0, cpu: cpu() - c0 };
    };
    await step(true);
    await step(false);
    const on: number[] = [], off: number[] = [], ortOff: number[] = [], cpuOn: number[] = [], cpuOff: number[] = [];
    for (let r = 0; r < reps * 3; r++) {
      const a = await step(true);
      on.push(a.ms);
      cpuOn.push(a.cpu);
      const o = await step(false);
      off.push(o.ms);
      ortOff.push(o.ort);
      cpuOff.push(o.cpu);
    }
    // the JavaScript side alone: onnxruntime's run answered at once with the outputs of a real run
    const inner = (model.session as unknown as { session: { run: (...a: unknown[]) => Promise<unknown> } }).session;
    const real = inner.run;
    let outputs: unknown;
    inner.run = async (...a: unknown[]) => outputs ??= await real.apply(inner, a);
    const js: number[] = [];
    for (let r = 0; r < 200; r++) {
      const t = performance.now();
      await model.session.run({ ids: [42], positions: [P], past, windowStart: 0, fetch: { logits: true, kv: true } });
      js.push(performance.now() - t);
    }
    inner.run = real;
    emit({
      part: "decode step",
      past: P,
      with_stats_ms: round(median(on)),
      without_stats_ms: round(median(off)),
      stats_ms_per_layer: round((median(on) - median(off)) / L, 3),
      with_stats_cpu_ms: round(median(cpuOn)),
      without_stats_cpu_ms: round(median(cpuOff)),
      stats_cpu_ms_per_layer: round((median(cpuOn) - median(cpuOff)) / L, 3),
      without_stats_outside_ort_ms: round(median(off) - median(ortOff), 3),
      session_js_only_ms: round(median(js.slice(1)), 3),
      load1: round(load()),
    });
  }
}

await report(`decode-${args.size}`, `deno run -A bench/decode.ts ${Deno.args.join(" ")}`.trim(), rows);
await model.session.close();
