/**
 * A reading command end to end: open the input, load the model, frame the
 * prompt, read with the live display, stream the answer, report.
 */
import { join } from "node:path";
import { EXIT, TomeError } from "../core/errors.ts";
import { openSource, type Source } from "../core/input/source.ts";
import { type LoadedModel, type MeterEvent, type MeterSummary, type ResolvedRun } from "../core/mod.ts";
import { generate, loadModel, read, resolveRun } from "../core/mod.ts";
import { type ModelConfig, readConfig } from "../core/model/config.ts";
import { chooseDevice, type DeviceChoice } from "../core/model/device.ts";
import { Meter } from "../core/meter/meter.ts";
import { rss } from "../core/meter/rss.ts";
import { buildPrompt, type Framing } from "../recipes/prompt.ts";
import { Display, type DisplayMode } from "./display.ts";
import { checkWritable, intFlag, numberFlag, type RunFlags } from "./options.ts";
import { formatBytes, formatCount } from "./progress.ts";
import { note, round, StdoutClosed, usage, writeStdout } from "./output.ts";

export interface Recipe {
  name: string;
  framing: Framing;
  maxTokens: number;
  temperature: number;
}

/** Bytes an answer is expected to need beyond the prompt, for `--positions auto`. */
const POSITION_MARGIN = 64;

/** Picks the model directory from --model or $TOME_MODEL. */
export function modelDir(flags: { model?: string }): string {
  const dir = flags.model ?? Deno.env.get("TOME_MODEL");
  if (!dir) throw usage("no model: give --model DIR or set TOME_MODEL (make a test one with `tome make-model tiny`)");
  return dir;
}

/** Everything decided before the model loads: input, config, device, the resolved run, sampling, display. */
export interface Prepared {
  dir: string;
  source: Source;
  config: ModelConfig;
  device: DeviceChoice;
  run: ResolvedRun;
  maxTokens: number;
  sampling: { temperature?: number; topP?: number };
  seed: number;
  threads?: number;
  mode: DisplayMode;
  say: (msg: string) => void;
}

/**
 * Checks every option and opens the input (bad input fails before any model
 * work): flags first, then the input, the model's config and the policy.
 */
export async function prepareRun(input: string, flags: RunFlags, defaultMaxTokens: number): Promise<Prepared> {
  const dir = modelDir(flags);
  const maxTokens = intFlag(flags.maxTokens, "--max-tokens") ?? defaultMaxTokens;
  const sampling = {
    temperature: numberFlag(flags.temperature, "--temperature", 0, 100),
    topP: numberFlag(flags.topP, "--top-p", 0, 1),
  };
  const seed = intFlag(flags.seed, "--seed", 0)!;
  const threads = intFlag(flags.threads, "--threads");
  const chunk = intFlag(flags.chunk, "--chunk");
  const decodeBudget = intFlag(flags.decodeBudget, "--decode-budget");
  const sparsity = numberFlag(flags.duoSparsity, "--duo-sparsity", 0, 1);
  if (flags.metrics) await checkWritable(flags.metrics, "--metrics");
  const mode: DisplayMode = flags.quiet
    ? "quiet"
    : flags.progress && Deno.stderr.isTerminal()
    ? "tty"
    : flags.progress
    ? "plain"
    : "quiet";
  const source = await openSource(input);
  const config = await readConfig(dir);
  const device = await chooseDevice(flags.device);
  const run = await resolveRun(config, {
    policy: flags.policy,
    policyOptions: { mask: flags.duoMask, sparsity },
    budget: flags.budget,
    chunk,
    positions: flags.positions,
    kvDtype: flags.kvDtype === "f32" ? "float32" : "float16",
    decodeBudget,
    questionPatch: flags.questionPatch,
    retainingHeads: flags.retainingHeads,
  }, { bytes: source.totalBytes, extraTokens: POSITION_MARGIN + maxTokens });
  if (run.policy.keepsAll) refuseFullIfTooLarge(source, run.tokenBytes);
  const say = (msg: string) => {
    if (mode !== "quiet") note(msg);
  };
  return { dir, source, config, device, run, maxTokens, sampling, seed, threads, mode, say };
}

/** Loads the model as prepared, and says what runs where. */
export async function loadPrepared(p: Prepared, flags: RunFlags): Promise<LoadedModel> {
  const { run } = p;
  const model = await loadModel(p.dir, {
    positions: run.positions,
    kvDtype: run.kvDtype,
    threads: p.threads,
    executionProviders: p.device.providers,
    retainingHeads: flags.retainingHeads,
    weights: flags.weights,
  });
  p.say(
    `${model.config.arch} ${model.config.layers} layers, ${model.graph.weights} weights, on ${p.device.device} (${p.device.reason}); ${
      model.built ? `graph built in ${model.buildSeconds.toFixed(1)}s` : "cached graph"
    }; ${run.policy.name}, budget ${run.budget} (${
      formatBytes(run.budget * run.tokenBytes)
    }), chunk ${run.chunk}, ${run.positions} positions`,
  );
  return model;
}

/** Runs one recipe over one input and prints the answer (or --json); errors are thrown as {@link TomeError}. */
export async function runRecipe(input: string, recipe: Recipe, flags: RunFlags): Promise<void> {
  const started = performance.now();
  const prepared = await prepareRun(input, flags, recipe.maxTokens);
  const { dir, source, device, run, maxTokens, mode } = prepared;
  const tLoad = performance.now();
  const model = await loadPrepared(prepared, flags);
  const loadSeconds = (performance.now() - tLoad) / 1000;

  const prompt = buildPrompt(model.tokenizer, recipe.framing, model.config.bosTokenId);
  const display = new Display(mode, { budget: run.budget, tokenBytes: run.tokenBytes, totalBytes: source.totalBytes });
  const metrics = flags.metrics ? await MetricsFile.open(flags.metrics) : null;
  const meter = new Meter(run.tokenBytes, (e: MeterEvent) => {
    display.event(e);
    metrics?.write(e);
  });
  const stop = (code: number) => () => {
    display.report(meter.summary(), { interrupted: true });
    metrics?.close(true);
    Deno.exit(code);
  };
  const onInt = stop(EXIT.interrupted), onTerm = stop(EXIT.terminated);
  Deno.addSignalListener("SIGINT", onInt);
  Deno.addSignalListener("SIGTERM", onTerm);
  try {
    const state = await read(source, { model, run, prefix: prompt.prefix, question: prompt.suffix, meter });
    display.clear();
    let answer = "";
    const { temperature, topP } = prepared.sampling;
    const stream = generate(state, {
      suffix: prompt.suffix,
      maxTokens,
      sampling: { temperature: temperature ?? recipe.temperature, ...(topP !== undefined ? { topP } : {}) },
      seed: prepared.seed,
    });
    let finish = "length";
    try {
      while (true) {
        const next = await stream.next();
        if (next.done) {
          finish = next.value;
          break;
        }
        answer += next.value;
        if (!flags.json) await writeStdout(next.value);
      }
      if (!flags.json && !answer.endsWith("\n")) await writeStdout("\n");
    } catch (err) {
      if (!(err instanceof StdoutClosed)) throw err;
      metrics?.close(true);
      return; // the reader went away (`| head`): stop quietly
    }
    const summary = state.meter.summary();
    const totalSeconds = (performance.now() - started) / 1000;
    display.report(summary, {
      extra: [
        `${"input".padEnd(14)}${formatBytes(source.stats.bytes).padStart(12)} in ${source.stats.files} file(s)${
          source.stats.replacedChars ? `, ${source.stats.replacedChars} invalid UTF-8 replaced` : ""
        }${source.stats.skipped.length ? `, ${source.stats.skipped.length} skipped` : ""}`,
      ],
    });
    if (flags.json) {
      await writeStdout(
        JSON.stringify(jsonResult({
          answer,
          finish,
          recipe: recipe.name,
          model: dir,
          device: device.device,
          policy: run.policy.name,
          budget: run.budget,
          chunk: run.chunk,
          positions: run.positions,
          kvDtype: flags.kvDtype,
          summary,
          source,
          seconds: { load: loadSeconds, total: totalSeconds },
        })) + "\n",
      );
    }
    metrics?.close(true);
  } catch (err) {
    display.clear();
    metrics?.close(false);
    throw err;
  } finally {
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGTERM", onTerm);
    await model.session.close();
  }
}

/** The --json object. */
export function jsonResult(r: {
  answer: string;
  finish: string;
  recipe: string;
  model: string;
  device: string;
  policy: string;
  budget: number;
  chunk: number;
  positions: string;
  kvDtype: string;
  summary: MeterSummary;
  source: Source;
  seconds: { load: number; total: number };
}) {
  const s = r.summary;
  return {
    answer: r.answer,
    finish_reason: r.finish,
    recipe: r.recipe,
    model: r.model,
    device: r.device,
    policy: r.policy,
    budget: r.budget,
    chunk: r.chunk,
    positions: r.positions,
    kv_dtype: r.kvDtype,
    input: { bytes: r.source.stats.bytes, files: r.source.stats.files, replaced_chars: r.source.stats.replacedChars },
    tokens_read: s.documentTokens,
    prompt_tokens: s.promptTokens,
    generated_tokens: s.generatedTokens,
    kept: s.kept,
    evicted: s.evicted,
    kv_bytes: s.kvBytes,
    kv_peak_bytes: s.kvPeakBytes,
    kv_full_bytes: s.fullKvBytes,
    kv_footprint: round(s.footprint, 6),
    peak_kv_fraction: round(s.peakFraction, 6),
    peak_rss_bytes: Math.max(s.rssPeakBytes, rss().peak),
    seconds: {
      load: round(r.seconds.load),
      prefill: round(s.prefillSeconds),
      decode: round(s.decodeSeconds),
      total: round(r.seconds.total),
    },
  };
}

/** `--policy full` refuses up front when the full cache would not fit in memory. */
function refuseFullIfTooLarge(source: Source, tokenBytes: number): void {
  if (source.totalBytes === null) return;
  const tokens = Math.ceil(source.totalBytes / 3); // ~3–4 bytes per token for prose and code
  const need = tokens * tokenBytes;
  const available = Deno.systemMemoryInfo().available;
  if (need > available * 0.8) {
    const fits = Math.floor((available * 0.5) / tokenBytes);
    throw new TomeError(
      "tooLarge",
      `--policy full would need about ${formatBytes(need)} of KV for ~${formatCount(tokens)} tokens, more than the ${
        formatBytes(available)
      } available; use an evicting policy, e.g. --policy snapkv --budget ${Math.min(fits, 4096)}`,
    );
  }
}

/** NDJSON of meter events, written beside the target and renamed into place when the run ends. */
class MetricsFile {
  private constructor(readonly path: string, readonly tmp: string, readonly file: Deno.FsFile) {}

  static async open(path: string): Promise<MetricsFile> {
    const tmp = join(path, "..", `.${path.split("/").pop()}.tmp-${Deno.pid}`);
    try {
      return new MetricsFile(path, tmp, await Deno.open(tmp, { write: true, create: true, truncate: true }));
    } catch (err) {
      throw new TomeError("output", `cannot write --metrics ${path}: ${(err as Error).message}`);
    }
  }

  write(e: MeterEvent): void {
    const line = new TextEncoder().encode(JSON.stringify(e) + "\n");
    for (let at = 0; at < line.length;) at += this.file.writeSync(line.subarray(at));
  }

  /** Keeps the file (success, or an interrupted run's record) or removes it (an error). */
  close(keep: boolean): void {
    try {
      this.file.close();
    } catch {
      // already closed
    }
    if (keep) Deno.renameSync(this.tmp, this.path);
    else Deno.removeSync(this.tmp);
  }
}
