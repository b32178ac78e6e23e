/**
 * The model layer at SmolLM2-360M shapes (random weights): checkpoint creation,
 * graph build time and size, cached-graph load time, and one prefill chunk
 * (512 tokens over 4096 retained entries) per graph variant.
 *
 *   deno run -A bench/model.ts [--size 360m] [--chunk 512] [--past 4096] [--threads N]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../core/model/onnx/decoder.ts";
import { ModelSession } from "../core/model/session.ts";
import { rss } from "../core/meter/rss.ts";
import { report, type Row } from "./report.ts";

const { values: args } = parseArgs({
  options: {
    size: { type: "string", default: "360m" },
    chunk: { type: "string", default: "512" },
    past: { type: "string", default: "4096" },
    threads: { type: "string" },
    variants: { type: "string", default: "original-f32,original-f16kv,compact-f32" },
  },
});
const root = join(import.meta.dirname!, "results", "model-cache");
Deno.env.set("TOME_CACHE", join(root, "cache"));
const modelDir = join(root, `random-${args.size}`);
const tokenizer = join(import.meta.dirname!, "..", "..", "shared", "fixtures", "smollm2-tokenizer");
const S = Number(args.chunk);
const P = Number(args.past);
const threads = args.threads ? Number(args.threads) : undefined;

const seconds = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
  const t0 = performance.now();
  const r = await f();
  return [r, (performance.now() - t0) / 1000];
};

const rows: Row[] = [];
if (!(await Deno.stat(join(modelDir, "config.json")).then(() => true, () => false))) {
  const [, s] = await seconds(() =>
    makeRandomModel(modelDir, { arch: "llama", shape: SIZES[args.size!], seed: 0, dtype: "BF16", tokenizer })
  );
  rows.push({ step: `make-model tiny --size ${args.size} (bf16)`, seconds: s });
}
const ckpt = await openCheckpoint(modelDir);
const c = ckpt.config;

const VARIANTS: Record<string, Partial<GraphOptions>> = {
  "original-f32": {},
  "original-f16kv": { kvDtype: "float16" },
  "compact-f32": { positions: "compact" },
  "original-f16w": { weights: "f16" },
};
for (const name of args.variants!.split(",")) {
  const opts: GraphOptions = { ...DEFAULT_GRAPH_OPTIONS, ...VARIANTS[name] };
  await Deno.remove(join(root, "cache"), { recursive: true }).catch(() => {});
  const [built, buildSeconds] = await seconds(() => graphFor(ckpt, opts));
  let bytes = 0;
  for await (const e of Deno.readDir(built.dir)) bytes += (await Deno.stat(join(built.dir, e.name))).size;
  const [cached, findSeconds] = await seconds(() => graphFor(ckpt, opts));
  if (cached.built) throw new Error("a second graphFor rebuilt the graph");
  const [session, loadSeconds] = await seconds(() => ModelSession.open(c, opts, cached.path, { threads }));

  const f16 = opts.kvDtype === "float16";
  const n = c.kvHeads * P * c.headDim;
  const fill = () => {
    const a = f16 ? new Uint16Array(n) : new Float32Array(n);
    for (let i = 0; i < n; i++) a[i] = f16 ? 0x2e66 : (i % 97) / 97 - 0.5; // ~0.1 in f16
    return a;
  };
  const keys = Array.from({ length: c.layers }, fill);
  const values = Array.from({ length: c.layers }, fill);
  const ids = Array.from({ length: S }, (_, i) => (i * 7919) % c.vocab);
  const run = () =>
    session.run({
      ids,
      positions: ids.map((_, i) => P + i),
      past: { keys, values, lengths: new Array(c.layers * c.kvHeads).fill(P) },
      windowStart: S - 32,
      fetch: { logits: true, kv: true, stats: ["window"] },
    });
  await run(); // warm-up
  const times = [];
  for (let i = 0; i < 3; i++) times.push((await seconds(run))[1]);
  times.sort();
  rows.push({
    step: `graph ${name}`,
    build_s: buildSeconds,
    graph_mb: Math.round(bytes / 1e6),
    cached_lookup_s: findSeconds,
    session_load_s: loadSeconds,
    [`chunk_${S}_over_${P}_s`]: times[1],
    prefill_tok_s: Math.round(S / times[1]),
    rss_mb: Math.round(rss().now / 1e6),
  });
  await session.close();
}
await report(`model-${args.size}`, `deno run -A bench/model.ts ${Deno.args.join(" ")}`.trim(), rows);
