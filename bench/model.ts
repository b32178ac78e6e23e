/**
 * The model layer at SmolLM2-360M shapes (random weights), one weight type (or
 * graph variant, or session option set) per child process so each peak RSS is
 * its own (the graph is built by a child of its own first): graph build time,
 * size on disk against the weight bytes, session load, one prefill chunk (512
 * tokens over 1024 retained entries: the steady state of a budget of 1024),
 * one decode step (1 token over 1024), RSS after load and at the peak. Times
 * are the best of 3 (chunks) and of 5 (steps): on a shared machine the least
 * disturbed run.
 *
 *   deno run -A bench/model.ts [--size 360m] [--chunk 512] [--past 1024] [--threads N]
 *     [--weights f32,f16,bf16,q8,q4,q4:64:asym:0]   TYPE[:BLOCK[:sym|asym[:ACCURACY_LEVEL]]]
 *     [--variants original-f32,original-f16kv,compact-f32]
 *     [--session default,no-arena,no-mem-pattern,no-arena-no-mem-pattern,no-prepack]
 *                                                  onnxruntime session options, measured one by one
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { join } from "node:path";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../core/model/onnx/decoder.ts";
import { parseWeightSpec } from "./weight_spec.ts";
import { ModelSession } from "../core/model/session.ts";
import { rss } from "../core/meter/rss.ts";
import { report, type Row } from "./report.ts";
import { runChild } from "./setup.ts";
import type { Ort } from "../core/model/ort.ts";

const { values: args } = parseArgs({
  options: {
    size: { type: "string", default: "360m" },
    chunk: { type: "string", default: "512" },
    past: { type: "string", default: "1024" },
    threads: { type: "string" },
    variants: { type: "string", default: "" },
    weights: { type: "string", default: "f32,f16,q8,q4" },
    session: { type: "string", default: "default" },
    keep: { type: "boolean", default: false },
    child: { type: "string" },
  },
});
const root = join(import.meta.dirname!, "results", "model-cache");
Deno.env.set("TOME_CACHE", join(root, "cache"));
const modelDir = join(root, `random-${args.size}`);
const tokenizer = join(import.meta.dirname!, "..", "..", "shared", "fixtures", "smollm2-tokenizer");
const S = Number(args.chunk);
const P = Number(args.past);
const threads = args.threads ? Number(args.threads) : undefined;

/** Graph variants by name (positions, KV type). */
const VARIANTS: Record<string, Partial<GraphOptions>> = {
  "original-f32": {},
  "original-f16kv": { kvDtype: "float16" },
  "compact-f32": { positions: "compact" },
};

/** onnxruntime session option sets, by name. */
const SESSIONS: Record<string, Ort.InferenceSession.SessionOptions> = {
  default: {}, // tome's: no arena, no memory pattern (core/model/session.ts)
  "ort-default": { enableCpuMemArena: true, enableMemPattern: true },
  "no-arena": { enableCpuMemArena: false },
  "no-mem-pattern": { enableMemPattern: false },
  "no-arena-no-mem-pattern": { enableCpuMemArena: false, enableMemPattern: false },
  "no-prepack": { extra: { session: { disable_prepacking: "1" } } },
};

const seconds = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
  const t0 = performance.now();
  const r = await f();
  return [r, (performance.now() - t0) / 1000];
};
/** CPU seconds (all threads of this process) spent in `f`: the work, whatever else the machine runs. */
const cpuSeconds = async (f: () => Promise<unknown>): Promise<number> => {
  const u0 = process.cpuUsage();
  await f();
  const u = process.cpuUsage(u0);
  return (u.user + u.system) / 1e6;
};
const best = (xs: number[]) => Math.min(...xs);

if (args.child) {
  const { name, opts: partial, session: sessionName, phase } = JSON.parse(args.child);
  const ckpt = await openCheckpoint(modelDir);
  const c = ckpt.config;
  const opts: GraphOptions = { ...DEFAULT_GRAPH_OPTIONS, ...partial };
  const [built, buildSeconds] = await seconds(() => graphFor(ckpt, opts));
  if (phase === "build") {
    let bytes = 0;
    for await (const e of Deno.readDir(built.dir)) bytes += (await Deno.stat(join(built.dir, e.name))).size;
    // the weights at this type: matrices at their bits (+ a float32 scale, and for asymmetric blocks a zero
    // point, per block), vectors float32
    let matrices = 0, vectors = 0;
    for (const t of ckpt.tensors.values()) {
      const n = t.shape.reduce((a, b) => a * b, 1);
      if (t.shape.length === 2) matrices += n;
      else vectors += n;
    }
    const w = opts.weights;
    const q = opts.quant;
    const bits = w === "f32" ? 32 : w === "q8" ? 8 : w === "q4" ? 4 : 16;
    const perBlock = q ? (32 + (q.symmetric ? 0 : bits)) / q.block : 0;
    const weightBytes = matrices * (bits + perBlock) / 8 + vectors * 4;
    console.log(JSON.stringify({
      build_s: built.built ? buildSeconds : null,
      graph_mb: Math.round(bytes / 1e6),
      weights_mb: Math.round(weightBytes / 1e6),
      graph_over_weights: Math.round((bytes / weightBytes) * 1000) / 1000,
    }));
    Deno.exit(0);
  }
  const rssBefore = rss().now;
  const [session, loadSeconds] = await seconds(() =>
    ModelSession.open(c, opts, built.path, { threads, ort: SESSIONS[sessionName] })
  );
  const rssLoaded = rss().now;
  const f16 = opts.kvDtype === "float16";
  const n = c.kvHeads * P * c.headDim;
  const fill = () => {
    const a = f16 ? new Uint16Array(n) : new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = f16 ? 0x2e66 : (i % 97) / 97 - 0.5; // ~0.1 in f16
    return a;
  };
  const keys = Array.from({ length: c.layers }, fill);
  const values = Array.from({ length: c.layers }, fill);
  const lengths = new Array(c.layers * c.kvHeads).fill(P);
  const ids = Array.from({ length: S }, (_, i) => (i * 7919) % c.vocab);
  const chunk = () =>
    session.run({
      ids,
      positions: ids.map((_, i) => P + i),
      past: { keys, values, lengths },
      windowStart: S - 32,
      fetch: { logits: true, kv: true, stats: ["window"] },
    });
  const step = () =>
    session.run({ ids: [ids[0]], positions: [P], past: { keys, values, lengths }, fetch: { logits: true, kv: true } });
  await chunk(); // warm-up
  const chunkTimes: number[] = [], chunkCpu: number[] = [];
  for (let i = 0; i < 3; i++) {
    chunkCpu.push(await cpuSeconds(async () => chunkTimes.push((await seconds(chunk))[1])));
  }
  await step();
  const stepTimes: number[] = [], stepCpu: number[] = [];
  for (let i = 0; i < 5; i++) stepCpu.push(await cpuSeconds(async () => stepTimes.push((await seconds(step))[1])));
  const cores = threads ?? navigator.hardwareConcurrency;
  const row: Row = {
    variant: name,
    session: sessionName,
    session_load_s: loadSeconds,
    [`chunk_${S}_over_${P}_s`]: best(chunkTimes),
    prefill_tok_s: Math.round(S / best(chunkTimes)),
    decode_step_ms: best(stepTimes) * 1000,
    decode_tok_s: Math.round(10 / best(stepTimes)) / 10,
    // the work in CPU seconds, and the rate it gives on `cores` otherwise idle cores (perfect parallelism)
    chunk_cpu_s: best(chunkCpu),
    prefill_tok_s_cpu_bound: Math.round((S * cores) / best(chunkCpu)),
    step_cpu_ms: best(stepCpu) * 1000,
    decode_tok_s_cpu_bound: Math.round((10 * cores) / best(stepCpu)) / 10,
    rss_load_mb: Math.round((rssLoaded - rssBefore) / 1e6),
    rss_mb: Math.round(rss().now / 1e6),
    peak_rss_mb: Math.round(rss().peak / 1e6),
  };
  await session.close();
  console.log(JSON.stringify(row));
} else {
  const rows: Row[] = [];
  if (!(await Deno.stat(join(modelDir, "config.json")).then(() => true, () => false))) {
    const [, s] = await seconds(() =>
      makeRandomModel(modelDir, { arch: "llama", shape: SIZES[args.size!], seed: 0, dtype: "BF16", tokenizer })
    );
    rows.push({ variant: `make-model tiny --size ${args.size} (bf16)`, build_s: s });
  }
  const jobs: { name: string; opts: Partial<GraphOptions> }[] = [
    ...args.variants!.split(",").filter(Boolean).map((name) => ({ name, opts: VARIANTS[name] })),
    ...args.weights!.split(",").filter(Boolean).map((w) => ({ name: w, opts: parseWeightSpec(w) })),
  ];
  if (!args.keep) await Deno.remove(join(root, "cache"), { recursive: true }).catch(() => {});
  const child = (job: object) => runChild<Row>(import.meta.filename!, job);
  for (const job of jobs) {
    const build = await child({ ...job, phase: "build" });
    for (const session of args.session!.split(",")) {
      const row = { ...(await child({ ...job, session, phase: "run" })), ...build };
      console.error(JSON.stringify(row));
      rows.push(row);
    }
  }
  await report(`model-${args.size}`, `deno run -A bench/model.ts ${Deno.args.join(" ")}`.trim(), rows);
}
