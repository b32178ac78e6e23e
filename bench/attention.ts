/**
 * One attention layer at SmolLM2-360M shapes (15 query / 5 KV heads, d = 64):
 * S new queries over P retained entries, with each implementation tried for
 * the decoder graph. All variants get the same inputs; their outputs are
 * checked against tome's before timing.
 *
 *   tome            core/model/onnx/attention.ts, with the four statistics (`want_stats` true: reading)
 *   tome-flag-off   the same graph with `want_stats` false (its If node skips them: decode)
 *   tome-no-stats   the same block, statistics not in the graph
 *   gqa             com.microsoft GroupQueryAttention (fused; no statistics; returns the concatenated cache)
 *   attention-23    ai.onnx opset-23 Attention with an explicit mask (returns the concatenated cache)
 *
 *   deno run -A bench/attention.ts [--chunk 512] [--past 4096] [--threads N]
 */
import { type StatNames, STATS } from "../core/model/onnx/stats.ts";
import { parseArgs } from "node:util";
import process from "node:process";
import { attend, attentionShapes } from "../core/model/onnx/attention.ts";
import { Graph } from "../core/model/onnx/graph.ts";
import { ort } from "../core/model/ort.ts";
import { rss } from "../core/meter/rss.ts";
import { normals, uniform } from "../kernels/random.ts";
import { report, type Row } from "./report.ts";

const { values: args } = parseArgs({
  options: {
    chunk: { type: "string", default: "512" },
    past: { type: "string", default: "4096" },
    threads: { type: "string" },
  },
});
const S = Number(args.chunk);
const P = Number(args.past);
const H = 15, K = 5, d = 64;

type Variant = "tome" | "tome-flag-off" | "tome-no-stats" | "gqa" | "attention-23";
const FLAGGED: Variant[] = ["tome", "tome-flag-off"];

function build(variant: Variant): Uint8Array {
  const g = new Graph();
  const qIn = g.input("q", "float32", [1, "S", H * d]);
  const kIn = g.input("k", "float32", [1, "S", K * d]);
  const vIn = g.input("v", "float32", [1, "S", K * d]);
  const pastK = g.input("past_key", "float32", [1, K, "P", d]);
  const pastV = g.input("past_value", "float32", [1, K, "P", d]);
  const heads = (x: string, n: number) =>
    g.op("Transpose", [g.op("Reshape", [x, g.ints([1, -1, n, d])])], { perm: [0, 2, 1, 3] });
  const S0 = g.op("Gather", [g.op("Shape", [qIn]), g.ints([1], [])]);
  if (variant === "gqa") {
    const P0 = g.op("Gather", [g.op("Shape", [pastK]), g.ints([2], [])]);
    const total = g.op("Cast", [g.op("Add", [S0, P0])], { to: 6 });
    const seqlens = g.op("Unsqueeze", [g.op("Sub", [total, g.op("Cast", [g.ints([1], [])], { to: 6 })]), g.ints([0])]);
    g.opN("GroupQueryAttention", [qIn, kIn, vIn, pastK, pastV, seqlens, total], 3, { num_heads: H, kv_num_heads: K }, {
      domain: "com.microsoft",
    }).forEach((name, i) => i === 0 && g.op("Identity", [name], {}, { out: "out" }));
  } else if (variant === "attention-23") {
    const P0 = g.op("Gather", [g.op("Shape", [pastK]), g.ints([2], [])]);
    const shapes = attentionShapes(g, S0, H, K, d, g.ints([0]));
    const zeros = g.op("Expand", [
      g.floats([0], []),
      g.op("Concat", [g.op("Unsqueeze", [S0, g.ints([0])]), g.op("Unsqueeze", [P0, g.ints([0])])], { axis: 0 }),
    ]);
    const mask = g.op("Concat", [zeros, shapes.causal], { axis: -1 });
    const [y] = g.opN("Attention", [heads(qIn, H), heads(kIn, K), heads(vIn, K), mask, pastK, pastV], 3, {});
    g.op("Reshape", [g.op("Transpose", [y], { perm: [0, 2, 1, 3] }), g.ints([1, -1, H * d])], {}, { out: "out" });
  } else {
    const windowStart = g.op("Unsqueeze", [g.op("Sub", [S0, g.ints([32], [])]), g.ints([0])]);
    const shapes = attentionShapes(g, S0, H, K, d, windowStart);
    const names = Object.fromEntries(STATS.map((s) => [s, `attn_${s}`])) as StatNames;
    const flagged = FLAGGED.includes(variant);
    const want = flagged ? g.input("want_stats", "bool", []) : g.op("Cast", [g.ints([1], [])], { to: 9 });
    const { out, stats } = attend(
      g,
      shapes,
      heads(qIn, H),
      heads(kIn, K),
      heads(vIn, K),
      pastK,
      pastV,
      "",
      names,
      want,
    );
    g.op("Identity", [flagged ? g.after(out, stats) : out], {}, { out: "out" });
    if (flagged) { for (const n of Object.values(names)) g.output(n, "float32", [1, K, "T"]); }
  }
  g.output("out", "float32", [1, "S", H * d]);
  return g.encode({ "": 23, "com.microsoft": 1 });
}

const o = await ort();
const r = uniform(1);
const feeds = {
  q: new o.Tensor("float32", normals(r, S * H * d), [1, S, H * d]),
  k: new o.Tensor("float32", normals(r, S * K * d), [1, S, K * d]),
  v: new o.Tensor("float32", normals(r, S * K * d), [1, S, K * d]),
  past_key: new o.Tensor("float32", normals(r, K * P * d), [1, K, P, d]),
  past_value: new o.Tensor("float32", normals(r, K * P * d), [1, K, P, d]),
};
const rows: Row[] = [];
let reference: Float32Array | null = null;
const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};
for (const variant of ["tome", "tome-flag-off", "tome-no-stats", "gqa", "attention-23"] as Variant[]) {
  const session = await o.InferenceSession.create(build(variant), {
    executionProviders: ["cpu"],
    graphOptimizationLevel: "all",
    ...(args.threads ? { intraOpNumThreads: Number(args.threads) } : {}),
  });
  const fed = FLAGGED.includes(variant)
    ? { ...feeds, want_stats: new o.Tensor("bool", Uint8Array.of(variant === "tome" ? 1 : 0), []) }
    : feeds;
  const run = async () => (await session.run(fed, ["out"])).out.data as Float32Array;
  const out = await run();
  reference ??= out;
  let diff = 0;
  for (let i = 0; i < out.length; i++) diff = Math.max(diff, Math.abs(out[i] - reference[i]));
  // medians: of 5 runs, or of 201 for short (decode) runs; CPU time too, which load inflates less
  const reps = S <= 16 ? 201 : 5;
  const times: number[] = [], cpu: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now(), c0 = cpuMs();
    await run();
    times.push((performance.now() - t0) / 1000);
    cpu.push(cpuMs() - c0);
  }
  times.sort((a, b) => a - b);
  cpu.sort((a, b) => a - b);
  rows.push({
    attention: variant,
    [`layer_ms_${S}_over_${P}`]: times[reps >> 1] * 1000,
    layer_cpu_ms: cpu[reps >> 1],
    x32_layers_ms: times[reps >> 1] * 32000,
    load1: Deno.loadavg()[0],
    max_abs_diff_vs_tome: diff,
    peak_rss_mb: Math.round(rss().peak / 1e6),
  });
  await session.release();
}
await report("attention", `deno run -A bench/attention.ts ${Deno.args.join(" ")}`.trim(), rows);
