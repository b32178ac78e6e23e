/**
 * A reading command end to end: open the input, load the model, frame the
 * prompt, read with the live display, stream the answer, report.
 */
import { join } from "node:path";
import { EXIT, TomeError } from "../core/errors.ts";
import { openSource, type Source } from "../core/input/source.ts";
import { type LoadedModel, type MeterEvent, type MeterSummary, type ReadState } from "../core/mod.ts";
import { generate, loadModel, read } from "../core/mod.ts";
import type { Policy } from "../core/policies/mod.ts";
import { parseBudget } from "../core/engine/budget.ts";
import { kvBytesPerToken, type ModelConfig, readConfig } from "../core/model/config.ts";
import { chooseDevice, type DeviceChoice } from "../core/model/device.ts";
import { makePolicy } from "../core/policies/mod.ts";
import { rss } from "../core/meter/rss.ts";
import { buildPrompt, type Framing } from "../recipes/prompt.ts";
import { Display, type DisplayMode } from "./display.ts";
import { intFlag, numberFlag, requireRetainingHeads, type RunFlags } from "./options.ts";
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

/** Everything decided before the model loads: input, config, device, positions, budget, policy, display. */
export interface Prepared {
  dir: string;
  source: Source;
  config: ModelConfig;
  device: DeviceChoice;
  positions: "original" | "compact";
  kvDtype: "float32" | "float16";
  budget: number;
  tokenBytes: number;
  policy: Policy;
  maxTokens: number;
  mode: DisplayMode;
  say: (msg: string) => void;
}

/** Opens the input first (bad input fails before any model work) and settles every option. */
export async function prepareRun(input: string, flags: RunFlags, defaultMaxTokens: number): Promise<Prepared> {
  const dir = modelDir(flags);
  const source = await openSource(input);
  const config = await readConfig(dir);
  const mode: DisplayMode = flags.quiet
    ? "quiet"
    : flags.progress && Deno.stderr.isTerminal()
    ? "tty"
    : flags.progress
    ? "plain"
    : "quiet";
  const maxTokens = intFlag(flags.maxTokens, "--max-tokens") ?? defaultMaxTokens;
  const positions = flags.positions !== "auto"
    ? flags.positions
    : source.totalBytes !== null && source.totalBytes + POSITION_MARGIN + maxTokens <= config.maxPositions
    ? "original"
    : "compact";
  const device = await chooseDevice(flags.device);
  const kvDtype = flags.kvDtype === "f32" ? "float32" : "float16";
  const bytesPerElement = kvDtype === "float32" ? 4 : 2;
  const budget = parseBudget(flags.budget, config, bytesPerElement);
  const tokenBytes = kvBytesPerToken(config, bytesPerElement);
  if (flags.policy === "full") refuseFullIfTooLarge(source, tokenBytes);
  const policy = await makePolicy(flags.policy, config, {
    mask: flags.duoMask,
    sparsity: numberFlag(flags.duoSparsity, "--duo-sparsity", 0, 1),
  });
  requireRetainingHeads(policy, flags.retainingHeads);
  const say = (msg: string) => {
    if (mode !== "quiet") note(msg);
  };
  return { dir, source, config, device, positions, kvDtype, budget, tokenBytes, policy, maxTokens, mode, say };
}

/** Loads the model as prepared, and says what runs where. */
export async function loadPrepared(p: Prepared, flags: RunFlags): Promise<LoadedModel> {
  const model = await loadModel(p.dir, {
    positions: p.positions,
    kvDtype: p.kvDtype,
    threads: intFlag(flags.threads, "--threads"),
    executionProviders: p.device.providers,
    retainingHeads: flags.retainingHeads,
  });
  p.say(
    `${model.config.arch} ${model.config.layers} layers on ${p.device.device} (${p.device.reason}); ${
      model.built ? `graph built in ${model.buildSeconds.toFixed(1)}s` : "cached graph"
    }; ${p.policy.name}, budget ${p.budget} (${
      formatBytes(p.budget * p.tokenBytes)
    }), chunk ${flags.chunk}, ${p.positions} positions`,
  );
  return model;
}

/** Runs one recipe over one input and prints the answer (or --json). Returns the exit code. */
export async function runRecipe(input: string, recipe: Recipe, flags: RunFlags): Promise<number> {
  const started = performance.now();
  const prepared = await prepareRun(input, flags, recipe.maxTokens);
  const { dir, source, device, positions, budget, tokenBytes, policy, maxTokens, mode } = prepared;
  const tLoad = performance.now();
  const model = await loadPrepared(prepared, flags);
  const loadSeconds = (performance.now() - tLoad) / 1000;

  const prompt = buildPrompt(model.tokenizer, recipe.framing, model.config.bosTokenId);
  const display = new Display(mode, { budget, tokenBytes, totalBytes: source.totalBytes });
  const metrics = flags.metrics ? await MetricsFile.open(flags.metrics) : null;
  let state: ReadState | null = null;
  const onInterrupt = () => {
    const summary = state?.meter.summary() ?? partialSummary(display.last, tokenBytes);
    display.report(summary, { interrupted: true });
    metrics?.close(true);
    Deno.exit(EXIT.interrupted);
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    const onEvent = (e: MeterEvent) => {
      display.event(e);
      metrics?.write(e);
    };
    state = await read(source, {
      model,
      policy,
      budget,
      chunk: intFlag(flags.chunk, "--chunk"),
      prefix: prompt.prefix,
      question: prompt.suffix,
      questionPatch: flags.questionPatch ? undefined : false,
      onEvent,
    });
    display.clear();
    let answer = "";
    const temperature = numberFlag(flags.temperature, "--temperature", 0, 100) ?? recipe.temperature;
    const topP = numberFlag(flags.topP, "--top-p", 0, 1);
    const stream = generate(state, {
      suffix: prompt.suffix,
      maxTokens,
      sampling: { temperature, ...(topP !== undefined ? { topP } : {}) },
      seed: intFlag(flags.seed, "--seed", 0),
      decodeBudget: intFlag(flags.decodeBudget, "--decode-budget"),
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
      return EXIT.ok; // the reader went away (`| head`): stop quietly
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
          policy: policy.name,
          budget,
          chunk: state.chunk,
          positions,
          kvDtype: flags.kvDtype,
          summary,
          source,
          seconds: { load: loadSeconds, total: totalSeconds },
        })) + "\n",
      );
    }
    metrics?.close(true);
    return EXIT.ok;
  } catch (err) {
    display.clear();
    metrics?.close(false);
    throw err;
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
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

function partialSummary(last: MeterEvent | null, tokenBytes: number): MeterSummary {
  const c = last?.type === "chunk" ? last : null;
  return {
    promptTokens: c?.tokens ?? 0,
    documentTokens: c?.tokens ?? 0,
    generatedTokens: last?.type === "token" ? last.generated : 0,
    kvBytes: last?.kvBytes ?? 0,
    kvPeakBytes: last?.kvPeakBytes ?? 0,
    fullKvBytes: (c?.tokens ?? 0) * tokenBytes,
    footprint: c?.footprint ?? 0,
    peakFraction: c?.peakFraction ?? 0,
    kept: c?.kept ?? 0,
    evicted: c?.evicted ?? 0,
    rssPeakBytes: rss().peak,
    prefillSeconds: c?.seconds ?? 0,
    decodeSeconds: 0,
  };
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
