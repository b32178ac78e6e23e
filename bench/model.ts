/**
 * The model layer at SmolLM2-360M shapes (random weights), one weight type (or
 * graph variant, or session option set) per child process so each peak RSS is
 * its own: graph build time, size on disk against the weight bytes, session
 * load, one prefill chunk (512 tokens over 4096 retained entries), one decode
 * step (1 token over 4096), RSS after load and at the peak.
 *
 *   deno run -A bench/model.ts [--size 360m] [--chunk 512] [--past 4096] [--threads N]
 *     [--weights f32,f16,bf16,q8,q4,q4:64:asym:0]   TYPE[:BLOCK[:sym|asym[:ACCURACY_LEVEL]]]
 *     [--variants original-f32,original-f16kv,compact-f32]
 *     [--session default,no-arena,no-mem-pattern]   onnxruntime session options, measured one by one
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../core/model/onnx/decoder.ts";
import { parseWeightSpec } from "./weight_spec.ts";
import { ModelSession } from "../core/model/session.ts";
import { rss } from "../core/meter/rss.ts";
import { DENO_RUN, report, type Row } from "./report.ts";
import type { Ort } from "../core/model/ort.ts";

const { values: args } = parseArgs({
  options: {
    size: { type: "string", default: "360m" },
    chunk: { type: "string", default: "512" },
    past: { type: "string", default: "4096" },
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
  default: {},
  "no-arena": { enableCpuMemArena: false },
  "no-mem-pattern": { enableMemPattern: false },
  "no-arena-no-mem-pattern": { enableCpuMemArena: false, enableMemPattern: false },
};

const seconds = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
  const t0 = performance.now();
  const r = await f();
  return [r, (performance.now() - t0) / 1000];
};
const median = (xs: number[]) => xs.sort((a, b) => a - b)[xs.length >> 1];

if (args.child) {
  const { name, opts: partial, session: sessionName } = JSON.parse(args.child);
  const ckpt = await openCheckpoint(modelDir);
  const c = ckpt.config;
  const opts: GraphOptions = { ...DEFAULT_GRAPH_OPTIONS, ...partial };
  const [built, buildSeconds] = await seconds(() => graphFor(ckpt, opts));
  let bytes = 0;
  for await (const e of Deno.readDir(built.dir)) bytes += (await Deno.stat(join(built.dir, e.name))).size;
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
  const chunkTimes = [];
  for (let i = 0; i < 3; i++) chunkTimes.push((await seconds(chunk))[1]);
  await step();
  const stepTimes = [];
  for (let i = 0; i < 7; i++) stepTimes.push((await seconds(step))[1]);
  const row: Row = {
    variant: name,
    session: sessionName,
    build_s: built.built ? buildSeconds : null,
    graph_mb: Math.round(bytes / 1e6),
    session_load_s: loadSeconds,
    [`chunk_${S}_over_${P}_s`]: median(chunkTimes),
    prefill_tok_s: Math.round(S / median(chunkTimes)),
    decode_step_ms: median(stepTimes) * 1000,
    decode_tok_s: Math.round(10 / median(stepTimes)) / 10,
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
  for (const job of jobs) {
    for (const session of args.session!.split(",")) {
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          ...DENO_RUN,
          import.meta.filename!,
          ...Deno.args.filter((a) => !a.startsWith("--child")),
          `--child=${JSON.stringify({ ...job, session })}`,
        ],
        stderr: "inherit",
      });
      const out = await child.output();
      const text = new TextDecoder().decode(out.stdout).trim().split("\n").pop() ?? "";
      if (!out.success) throw new Error(`${job.name}/${session} failed`);
      const row = JSON.parse(text) as Row;
      console.error(JSON.stringify(row));
      rows.push(row);
    }
  }
  await report(`model-${args.size}`, `deno run -A bench/model.ts ${Deno.args.join(" ")}`.trim(), rows);
}
