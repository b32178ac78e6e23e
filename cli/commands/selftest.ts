import type { Command } from "commander";
import { cpus } from "node:os";
import { join } from "node:path";
import { uniform } from "../../kernels/random.ts";
import { TomeError } from "../../core/errors.ts";
import { projectText } from "../../core/input/corpus.ts";
import { buildGraph } from "../../core/model/graph_build.ts";
import { type Checkpoint, openCheckpoint } from "../../core/model/checkpoint.ts";
import { cudaInstalled, webgpuAdapter } from "../../core/model/device.ts";
import { makeRandomModel, SIZES } from "../../core/model/make.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions, graphOptionsFor } from "../../core/model/onnx/decoder.ts";
import { appendEntries, forward, loadWeights, type Weights } from "../../core/model/reference.ts";
import { emptyPast, ModelSession } from "../../core/model/session.ts";
import { trainBpe } from "../../core/tokens/train.ts";
import { note, round, writeStdout } from "../output.ts";

/** One device's selftest result. */
export interface SelftestRow {
  device: "cpu" | "webgpu" | "cuda";
  /** What runs it: the CPU model, or the GPU adapter's description. */
  adapter: string;
  /** A software adapter (lavapipe, SwiftShader): correct, slower than the CPU provider. */
  software: boolean;
  pass: boolean;
  /** Not checked: onnxruntime found no adapter for a device only a software adapter stands for (see `error`). */
  skipped: boolean;
  /** Largest |graph logit − reference logit| over a one-pass and a chunked prefill. */
  maxDeltaLogit: number | null;
  tolerance: number;
  /** Prefill throughput of the tiny model, chunks of {@link SPEED_CHUNK} with the cache carried. */
  prefillTokensPerSecond: number | null;
  /** Why it failed, when it did not get as far as comparing. */
  error?: string;
}

/** Absolute logit tolerance: the CPU provider matches the float32 reference closely; GPUs sum in other orders. */
const TOLERANCE = { cpu: 1e-4, webgpu: 2e-3, cuda: 2e-3 };
const ORACLE_TOKENS = 48;
const ORACLE_CHUNK = 16;
const SPEED_TOKENS = 1024;
const SPEED_CHUNK = 256;

/** `tome selftest`: builds a tiny model and checks each available device against the reference forward pass. */
export function selftestCommand(program: Command): void {
  program.command("selftest")
    .description("check each available device (cpu, webgpu, cuda) against the reference forward pass on a tiny model")
    .option("--json", "print one JSON object")
    .addHelpText(
      "after",
      `
Builds a tiny random model in a temporary folder, runs its ONNX graph on every
available device and compares the logits with tome's TypeScript reference
forward pass; prints device, adapter, pass/fail, max |Δlogit| and prefill
tokens/s. Exit code 0 when every device passes, 12 when one fails.

Example:
  tome selftest
  tome selftest --json`,
    )
    .action(async (opts: { json?: boolean }) => {
      const tmp = await Deno.makeTempDir({ prefix: "tome-selftest-" });
      try {
        const ckpt = await makeTinyModel(tmp);
        const c = ckpt.config;
        if (!opts.json) {
          note(`selftest: a tiny random llama (${c.layers} layers, hidden ${c.hidden}, vocab ${c.vocab}) in ${tmp}`);
        }
        const rows = await selftest(ckpt, tmp);
        if (opts.json) {
          await writeStdout(JSON.stringify(jsonReport(ckpt, rows)) + "\n");
        } else {
          await writeStdout(table(rows));
        }
        const failed = verdict(rows);
        if (failed) throw failed;
      } finally {
        await Deno.remove(tmp, { recursive: true }).catch(() => {});
      }
    });
}

/** The error `tome selftest` exits with (device, 12) when a device that was checked failed; null when all passed. */
export function verdict(rows: SelftestRow[]): TomeError | null {
  const failed = rows.filter((r) => !r.pass && !r.skipped);
  if (failed.length === 0) return null;
  const why = (r: SelftestRow) => r.error ?? `max |Δlogit| ${fmt(r.maxDeltaLogit)} > ${fmt(r.tolerance)}`;
  return new TomeError("device", `selftest failed on ${failed.map((r) => `${r.device} (${why(r)})`).join(", ")}`);
}

/**
 * Whether a device's error means it is not there rather than wrong: onnxruntime
 * could not start on it (a device error) and only a software adapter stands for
 * it. Deno's adapter may come from another backend (GL) than onnxruntime's Dawn
 * needs (Vulkan); `--device auto` never picks a software adapter. A hardware
 * adapter onnxruntime cannot use is a failure: `--device auto` would pick it.
 */
export function unavailable(software: boolean, err: unknown): boolean {
  return software && err instanceof TomeError && err.kind === "device";
}

/** A tiny random llama with a tokenizer learned from the project's text, in `dir`. */
async function makeTinyModel(dir: string): Promise<Checkpoint> {
  const tokenizer = join(dir, "tokenizer");
  await Deno.mkdir(tokenizer);
  const trained = trainBpe(await projectText(20_000), 384);
  await Deno.writeTextFile(join(tokenizer, "tokenizer.json"), JSON.stringify(trained.tokenizerJson));
  await Deno.writeTextFile(join(tokenizer, "tokenizer_config.json"), JSON.stringify(trained.tokenizerConfig));
  const model = join(dir, "model");
  await makeRandomModel(model, { arch: "llama", shape: SIZES.tiny, seed: 7, dtype: "F32", tokenizer });
  return await openCheckpoint(model);
}

/** The devices to check: the CPU always, WebGPU when an adapter answers, CUDA when its provider is installed. */
async function devices(): Promise<{ device: SelftestRow["device"]; adapter: string; software: boolean }[]> {
  const cpu = cpus();
  const list: { device: SelftestRow["device"]; adapter: string; software: boolean }[] = [{
    device: "cpu",
    adapter: `${cpu[0]?.model?.trim() || Deno.build.arch} (${cpu.length} threads)`,
    software: false,
  }];
  const gpu = await webgpuAdapter();
  if (gpu) list.push({ device: "webgpu", adapter: gpu.description || "WebGPU adapter", software: gpu.software });
  if (cudaInstalled()) list.push({ device: "cuda", adapter: "onnxruntime CUDA provider", software: false });
  return list;
}

/** Runs the oracle and the speed measurement on every available device. */
export async function selftest(ckpt: Checkpoint, dir: string): Promise<SelftestRow[]> {
  const weights = await loadWeights(ckpt);
  const graphs = new Map<string, string>();
  /** The graph for `providers` (WebGPU's has no If switches), built once. */
  const graph = async (logits: "all" | "last", providers: string[]) => {
    const opts: GraphOptions = graphOptionsFor({ ...DEFAULT_GRAPH_OPTIONS, logits }, providers);
    const name = `graph-${logits}${opts.alwaysStats ? "-always" : ""}`;
    if (!graphs.has(name)) {
      const path = join(dir, name);
      await Deno.mkdir(path);
      await buildGraph(ckpt, opts, path);
      graphs.set(name, join(path, "model.onnx"));
    }
    return graphs.get(name)!;
  };
  const rows: SelftestRow[] = [];
  for (const d of await devices()) {
    const row: SelftestRow = {
      ...d,
      pass: false,
      skipped: false,
      maxDeltaLogit: null,
      tolerance: TOLERANCE[d.device],
      prefillTokensPerSecond: null,
    };
    const providers = d.device === "cpu" ? ["cpu"] : [d.device, "cpu"];
    try {
      row.maxDeltaLogit = await maxLogitDelta(ckpt, weights, await graph("all", providers), providers);
      row.pass = row.maxDeltaLogit < row.tolerance;
      row.prefillTokensPerSecond = await prefillSpeed(ckpt, await graph("last", providers), providers);
    } catch (err) {
      row.pass = false;
      row.error = shortError(err);
      row.skipped = unavailable(d.software, err);
    }
    rows.push(row);
  }
  return rows;
}

/** onnxruntime's messages start with a source location and an assertion; the sentence after them is the news. */
function shortError(err: unknown): string {
  const msg = (err instanceof Error ? err.message : String(err)).split("\n")[0];
  return msg.replace(/\S+\.(?:cc|cpp|h):\d+ .*? was false\. /, "").replace(/ \(try --device cpu\)$/, "");
}

function randomIds(n: number, vocab: number, seed: number): number[] {
  const r = uniform(seed);
  return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/**
 * Max |Δlogit| between the graph at `path` on `providers` and the reference
 * forward pass with weights `w`: one pass, and chunks with the graph's own cache carried.
 */
export async function maxLogitDelta(ckpt: Checkpoint, w: Weights, path: string, providers: string[]): Promise<number> {
  const c = ckpt.config;
  const session = await ModelSession.open(
    c,
    graphOptionsFor({ ...DEFAULT_GRAPH_OPTIONS, logits: "all" }, providers),
    path,
    {
      executionProviders: providers,
    },
  );
  try {
    const ids = randomIds(ORACLE_TOKENS, c.vocab, 11);
    const positions = ids.map((_, i) => i);
    const expected = forward(c, w, ids, positions).logits;
    const one = await session.run({ ids, positions, past: emptyPast(c, "float32"), fetch: { kv: false } });
    let worst = maxAbsDiff(one.logits!, expected);
    const chunked = await prefill(session, ids, ORACLE_CHUNK);
    worst = Math.max(worst, maxAbsDiff(chunked, expected));
    return worst;
  } finally {
    await session.close();
  }
}

/** Feeds `ids` in chunks, appending each chunk's new K/V to the cache; returns the logits of every chunk, concatenated. */
async function prefill(session: ModelSession, ids: number[], chunk: number): Promise<Float32Array> {
  const { layers, kvHeads: K, headDim: d } = session.config;
  let keys = Array.from({ length: layers }, () => new Float32Array(0));
  let values = keys.slice();
  const logits: Float32Array[] = [];
  for (let at = 0; at < ids.length; at += chunk) {
    const part = ids.slice(at, at + chunk);
    const r = await session.run({
      ids: part,
      positions: part.map((_, i) => at + i),
      past: { keys, values, lengths: new Array(layers * K).fill(at) },
    });
    logits.push(r.logits!);
    keys = keys.map((k, l) => appendEntries(k, at, r.newKeys[l] as Float32Array, part.length, K, d));
    values = values.map((v, l) => appendEntries(v, at, r.newValues[l] as Float32Array, part.length, K, d));
  }
  const out = new Float32Array(logits.reduce((n, l) => n + l.length, 0));
  let at = 0;
  for (const l of logits) {
    out.set(l, at);
    at += l.length;
  }
  return out;
}

/** Prefill tokens per second (after one warm-up chunk), last-position logits. */
async function prefillSpeed(ckpt: Checkpoint, path: string, providers: string[]): Promise<number> {
  const c = ckpt.config;
  const session = await ModelSession.open(c, graphOptionsFor(DEFAULT_GRAPH_OPTIONS, providers), path, {
    executionProviders: providers,
  });
  try {
    const ids = randomIds(SPEED_TOKENS, c.vocab, 5);
    await prefill(session, ids.slice(0, SPEED_CHUNK), SPEED_CHUNK);
    const started = performance.now();
    await prefill(session, ids, SPEED_CHUNK);
    return SPEED_TOKENS / ((performance.now() - started) / 1000);
  } finally {
    await session.close();
  }
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`logits: ${a.length} values from the graph, ${b.length} expected`);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

const fmt = (x: number | null) => (x === null ? "-" : x === Infinity ? "NaN" : x.toExponential(1));

function rate(x: number | null): string {
  if (x === null) return "-";
  return x >= 1000 ? `${(x / 1000).toFixed(1)}K` : x.toFixed(0);
}

/** The human-readable table. */
export function table(rows: SelftestRow[]): string {
  const lines = [["device", "adapter", "result", "max |Δlogit|", "tolerance", "prefill tok/s"]];
  for (const r of rows) {
    lines.push([
      r.device,
      r.adapter + (r.software ? " (software)" : ""),
      r.pass ? "pass" : r.skipped ? "skip" : "FAIL",
      fmt(r.maxDeltaLogit),
      fmt(r.tolerance),
      rate(r.prefillTokensPerSecond),
    ]);
  }
  const widths = lines[0].map((_, i) => Math.max(...lines.map((l) => l[i].length)));
  const text = lines.map((l) => l.map((cell, i) => cell.padEnd(widths[i])).join("  ").trimEnd());
  for (const r of rows) if (r.error) text.push(`${r.device}: ${r.skipped ? "not available: " : ""}${r.error}`);
  return text.join("\n") + "\n";
}

function jsonReport(ckpt: Checkpoint, rows: SelftestRow[]) {
  const c = ckpt.config;
  return {
    model: { arch: c.arch, layers: c.layers, hidden: c.hidden, heads: c.heads, kv_heads: c.kvHeads, vocab: c.vocab },
    pass: rows.every((r) => r.pass || r.skipped),
    devices: rows.map((r) => ({
      device: r.device,
      adapter: r.adapter,
      software: r.software,
      pass: r.pass,
      skipped: r.skipped,
      max_abs_logit_diff: r.maxDeltaLogit === null || !Number.isFinite(r.maxDeltaLogit) ? null : r.maxDeltaLogit,
      tolerance: r.tolerance,
      prefill_tokens_per_s: r.prefillTokensPerSecond === null ? null : round(r.prefillTokensPerSecond, 1),
      ...(r.error ? { error: r.error } : {}),
    })),
  };
}
