/**
 * This machine's roofline, measured with onnxruntime itself (the CPU provider,
 * the threads tome uses):
 *   - f32 GEMM throughput: MatMul [M, K] × [K, N] at prefill shapes (M = 512);
 *   - MatMulNBits throughput at the same shape, 8 and 4 bits, accuracy level 0
 *     (float32 compute) and 4 (int8 activations: the VNNI kernels);
 * Times are CPU seconds over the cores used (the machine is shared with other
 * work: wall times are printed beside them).
 *   - memory bandwidth: a vector–matrix product (M = 1) over a weight far larger
 *     than the caches, at each weight type — the bytes bound of decode — and an
 *     elementwise Add over large tensors (read 2, write 1).
 *
 *   deno run -A bench/roofline.ts [--threads N] [--k 960] [--n 2560] [--m 512] [--reps 5]
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { f32ToF16 } from "../kernels/fp16.ts";
import { quantizeBlocks } from "../kernels/quant.ts";
import { Graph } from "../core/model/onnx/graph.ts";
import { ort } from "../core/model/ort.ts";
import { report, type Row } from "./report.ts";

const { values: args } = parseArgs({
  options: {
    threads: { type: "string" },
    m: { type: "string", default: "512" },
    k: { type: "string", default: "960" },
    n: { type: "string", default: "2560" },
    reps: { type: "string", default: "5" },
  },
});
const o = await ort();
const reps = Number(args.reps);
const sessionOptions = {
  graphOptimizationLevel: "all" as const,
  ...(args.threads ? { intraOpNumThreads: Number(args.threads) } : {}),
};

/** A deterministic pseudo-random matrix. */
function values(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 32 - 0.5;
  }
  return a;
}

type Kind = "f32" | "f16" | "q8" | "q4";
/** y = x · W for W [K, N] of a kind: MatMul (f32; f16 cast to f32 once at load) or MatMulNBits. */
function product(M: number, K: number, N: number, kind: Kind, level: 0 | 4): Uint8Array {
  const g = new Graph();
  const x = g.input("x", "float32", [M, K]);
  const w = values(K * N, 7);
  if (kind === "f32") g.op("MatMul", [x, g.weight("w", "float32", [K, N], w)], {}, { out: "y" });
  else if (kind === "f16") {
    g.op("MatMul", [x, g.op("Cast", [g.weight("w", "float16", [K, N], f32ToF16(w))], { to: 1 })], {}, { out: "y" });
  } else {
    const bits = kind === "q8" ? 8 : 4;
    // MatMulNBits takes W transposed, [N, K]: the values do not matter for timing
    const q = quantizeBlocks(w, N, K, { bits, block: 32, symmetric: true });
    const nb = q.scales.length / N;
    g.op(
      "MatMulNBits",
      [
        x,
        g.weight("b", "uint8", [N, nb, q.data.length / N / nb], q.data),
        g.weight("s", "float32", [N, nb], q.scales),
      ],
      { K, N, bits, block_size: 32, accuracy_level: level },
      { domain: "com.microsoft", out: "y" },
    );
  }
  g.output("y", "float32", [M, N]);
  return g.encode({ "": 23, "com.microsoft": 1 });
}

/**
 * Seconds of one run after a warm-up: the best of `reps` wall times, and the best of their CPU
 * seconds (all threads) divided by the cores used — what the run takes on otherwise idle cores.
 * The build machine is shared: the second is the roofline, the first what was seen.
 */
async function time(model: Uint8Array, feeds: () => Record<string, unknown>): Promise<number> {
  const s = await o.InferenceSession.create(model, sessionOptions);
  const f = feeds() as Record<string, InstanceType<typeof o.Tensor>>;
  await s.run(f);
  const t: number[] = [], cpu: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    const u0 = process.cpuUsage();
    await s.run(f);
    const u = process.cpuUsage(u0);
    t.push((performance.now() - t0) / 1000);
    cpu.push((u.user + u.system) / 1e6);
  }
  await s.release();
  lastWall = Math.min(...t);
  return Math.min(...cpu) / cores;
}
let lastWall = 0;
const cores = args.threads ? Number(args.threads) : navigator.hardwareConcurrency;

const rows: Row[] = [];
const M = Number(args.m), K = Number(args.k), N = Number(args.n);
const x = (m: number, k: number) => ({ x: new o.Tensor("float32", values(m * k, 3), [m, k]) });

// compute: prefill-shaped products
for (const [kind, level] of [["f32", 0], ["q8", 0], ["q8", 4], ["q4", 0], ["q4", 4]] as [Kind, 0 | 4][]) {
  const s = await time(product(M, K, N, kind, level), () => x(M, K));
  rows.push({
    measure: "compute",
    op: kind === "f32" ? "MatMul f32" : `MatMulNBits ${kind} accuracy_level ${level}`,
    shape: `${M}x${K} · ${K}x${N}`,
    wall_ms: lastWall * 1000,
    ms: s * 1000,
    gflops: Math.round((2 * M * K * N) / s / 1e9 * 10) / 10,
  });
  console.error(JSON.stringify(rows.at(-1)));
}

// bandwidth: decode-shaped products over a weight much larger than the caches
const BK = 4096, BN = 8192;
for (const [kind, level] of [["f32", 0], ["f16", 0], ["q8", 4], ["q8", 0], ["q4", 4], ["q4", 0]] as [Kind, 0 | 4][]) {
  const s = await time(product(1, BK, BN, kind, level), () => x(1, BK));
  const bytesPerWeight = { f32: 4, f16: 4, q8: 1 + 4 / 32, q4: 0.5 + 4 / 32 }[kind]; // f16 is widened at load
  const bytes = BK * BN * bytesPerWeight;
  rows.push({
    measure: "bytes (decode)",
    op: kind.startsWith("q") ? `MatMulNBits ${kind} accuracy_level ${level}` : `MatMul ${kind} (1 row)`,
    shape: `1x${BK} · ${BK}x${BN}`,
    wall_ms: lastWall * 1000,
    ms: s * 1000,
    weight_mb: Math.round(bytes / 1e6),
    gb_s: Math.round((bytes / s / 1e9) * 10) / 10,
  });
  console.error(JSON.stringify(rows.at(-1)));
}
{
  // a reduction reads its (zero-copy) input once and writes one number: read bandwidth
  const n = 64 * 2 ** 20; // 256 MiB
  const g = new Graph();
  g.op("ReduceSum", [g.input("a", "float32", [64, n / 64])], { keepdims: 0 }, { out: "y" });
  g.output("y", "float32", []);
  const a = new o.Tensor("float32", values(n, 1), [64, n / 64]);
  const s = await time(g.encode({ "": 23 }), () => ({ a }));
  rows.push({
    measure: "bytes (stream)",
    op: "ReduceSum f32 (read once)",
    shape: `${n}`,
    wall_ms: lastWall * 1000,
    ms: s * 1000,
    weight_mb: Math.round((4 * n) / 1e6),
    gb_s: Math.round(((4 * n) / s / 1e9) * 10) / 10,
  });
}
await report("roofline", `deno run -A bench/roofline.ts ${Deno.args.join(" ")}`.trim(), rows);
