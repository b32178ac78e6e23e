/**
 * A reading command end to end: open the input, load the model, frame the
 * prompt, read with the live display, stream the answer, report.
 */
import { EXIT, TomeError } from "../core/errors.ts";
import { openSource, type Source } from "../core/input/source.ts";
import {
  fork,
  generate,
  type LoadedModel,
  loadModel,
  loadState,
  type MeterEvent,
  type MeterSummary,
  read,
  type ReadState,
  readStateHeader,
  type ResolvedRun,
  resolveRun,
  saveState,
  type StateHeader,
  type StateInfo,
} from "../core/mod.ts";
import { gcStates, inputDigest, stateCacheDir, statePath, touchState } from "../core/state/cache.ts";
import { modelDigest, tokenizerDigest } from "../core/state/digest.ts";
import { runTierOptions, tierRunOptions } from "../core/state/file.ts";
import { removePartialBuilds } from "../core/model/lock.ts";
import { TempFile } from "../core/temp_file.ts";
import { type ModelConfig, readConfig } from "../core/model/config.ts";
import { resolveWeights, type WeightChoice, type WeightType } from "../core/model/onnx/decoder.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { type AdapterInfo, chooseDevice, type DeviceChoice } from "../core/model/device.ts";
import { Meter } from "../core/meter/meter.ts";
import { rss } from "../core/meter/rss.ts";
import { buildPrompt, type Framing } from "../recipes/prompt.ts";
import { Display, type DisplayMode } from "./display.ts";
import { lowTierView, type MethodJson, methodJson } from "./method.ts";
import { checkWritable, intFlag, keyChannelsFlag, kvDtypeFlag, numberFlag, type RunFlags } from "./options.ts";
import { formatBytes, formatCount } from "./progress.ts";
import { note, round, StdoutClosed, usage, writeStdout } from "./output.ts";

export interface Recipe {
  name: string;
  /** The question, for recipes that ask one. */
  label?: string;
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
  /** The input; null when answering from a saved state (`--state`). */
  source: Source | null;
  /** The saved state's header (`--state`). */
  state: StateHeader | null;
  config: ModelConfig;
  /** The weight type the graph stores (the flag, `auto` resolved from the checkpoint, or the saved state's). */
  weights: WeightType;
  device: DeviceChoice;
  run: ResolvedRun;
  /** The most tokens any answer may take, and `--max-tokens` when given (else each recipe's own). */
  maxTokens: number;
  maxTokensFlag?: number;
  sampling: { temperature?: number; topP?: number };
  seed: number;
  threads?: number;
  mode: DisplayMode;
  say: (msg: string) => void;
}

/** The weight type a run loads: the choice, or for `auto` the checkpoint's own (read from its headers). */
export async function chosenWeights(dir: string, choice: WeightChoice): Promise<WeightType> {
  return choice === "auto" ? resolveWeights(await openCheckpoint(dir), "auto") : choice;
}

/**
 * Checks every option and opens the input (bad input fails before any model
 * work): flags first, then the input, the model's config and the policy.
 */
export async function prepareRun(input: string | null, flags: RunFlags, defaultMaxTokens: number): Promise<Prepared> {
  const dir = modelDir(flags);
  const maxTokensFlag = intFlag(flags.maxTokens, "--max-tokens");
  const maxTokens = maxTokensFlag ?? defaultMaxTokens;
  const sampling = {
    temperature: numberFlag(flags.temperature, "--temperature", 0, 100),
    topP: numberFlag(flags.topP, "--top-p", 0, 1),
  };
  const seed = intFlag(flags.seed, "--seed", 0)!;
  const threads = intFlag(flags.threads, "--threads");
  const chunk = intFlag(flags.chunk, "--chunk");
  const decodeBudget = intFlag(flags.decodeBudget, "--decode-budget");
  const sparsity = numberFlag(flags.duoSparsity, "--duo-sparsity", 0, 1);
  const keyChannels = keyChannelsFlag(flags.keyChannels);
  if (flags.metrics) await checkWritable(flags.metrics, "--metrics");
  const mode: DisplayMode = flags.quiet
    ? "quiet"
    : flags.progress && Deno.stderr.isTerminal()
    ? "tty"
    : flags.progress
    ? "plain"
    : "quiet";
  if (flags.save) await checkWritable(flags.save, "--save");
  const state = flags.state ? await readStateHeader(flags.state) : null;
  const source = input === null ? null : await openSource(input);
  const config = await readConfig(dir);
  // a saved state was computed with its weights; the flag decides otherwise
  const weights = await chosenWeights(dir, (state?.run.weights as WeightChoice | undefined) ?? flags.weights);
  const device = await chooseDevice(flags.device);
  // a saved state fixes how it was read; the rest comes from the flags
  const run = await resolveRun(config, {
    policy: state?.run.policy ?? flags.policy,
    policyOptions: { mask: flags.duoMask, sparsity },
    budget: state?.run.budget ?? flags.budget,
    chunk: state?.run.chunk ?? chunk,
    weights,
    positions: state?.run.positions ?? flags.positions,
    kvDtype: state?.run.kvDtype ?? kvDtypeFlag(flags.kvDtype),
    decodeBudget,
    window: state?.run.window,
    questionPatch: state?.run.questionPatch ?? flags.questionPatch,
    merge: state ? state.run.merge ?? undefined : flags.merge,
    // the low tier and thin keys too (a state holds them: --keep-evicted, --low-budget, --key-channels)
    ...(state ? tierRunOptions(state, state.model.headDim) : {
      keyChannels,
      keepEvicted: flags.keepEvicted as "int4" | "int2" | undefined, // checked by resolveRun
      lowBudget: flags.lowBudget,
    }),
    retainingHeads: flags.retainingHeads,
  }, { bytes: state ? null : source?.totalBytes, extraTokens: POSITION_MARGIN + maxTokens });
  if (state && state.model.layers !== config.layers) {
    throw new TomeError(
      "stateInvalid",
      `${flags.state}: made with another model (${state.model.arch}, ${state.model.layers} layers)`,
    );
  }
  if (run.policy.keepsAll && source) refuseFullIfTooLarge(source, run.tokenBytes);
  const say = (msg: string) => {
    if (mode !== "quiet") note(msg);
  };
  return {
    dir,
    source,
    state,
    config,
    weights,
    device,
    run,
    maxTokens,
    maxTokensFlag,
    sampling,
    seed,
    threads,
    mode,
    say,
  };
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
    ...(run.lowTier ? { lowTier: run.lowTier.tier } : {}),
    ...(run.keyChannels ? { queryEnergy: true } : {}),
    weights: p.weights,
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

/** What a reading command asks: one recipe per question (`ask -q Q1 -q Q2`), one otherwise. */
export interface Reading {
  recipes: Recipe[];
  /** Printed before each answer when there are several (the questions). */
  labels?: string[];
  /** The questions, as a saved state records them. */
  questions?: string[];
}

/**
 * Reads one input (or loads a saved state) once, then answers every recipe
 * from its own fork of the read; prints the answers (or --json, one object
 * per answer) and the report. Errors are thrown as {@link TomeError}.
 */
export async function runReading(input: string | null, reading: Reading, flags: RunFlags): Promise<void> {
  const started = performance.now();
  const maxTokens = Math.max(...reading.recipes.map((r) => r.maxTokens));
  const prepared = await prepareRun(input, flags, maxTokens);
  const { dir, source, device, run, mode } = prepared;
  const display = new Display(mode, {
    budget: run.budget,
    tokenBytes: run.tokenBytes,
    totalBytes: source?.totalBytes ?? null,
    lowTier: lowTierView(run, prepared.config),
  });
  const metrics = flags.metrics ? MetricsFile.open(flags.metrics) : null;
  let meter: Meter | null = null;
  const stop = (code: number) => () => {
    removePartialBuilds();
    if (meter) display.report(meter.summary(), { interrupted: true });
    metrics?.close(true);
    Deno.exit(code);
  };
  const onInt = stop(EXIT.interrupted), onTerm = stop(EXIT.terminated);
  Deno.addSignalListener("SIGINT", onInt);
  Deno.addSignalListener("SIGTERM", onTerm);
  const onEvent = (e: MeterEvent) => {
    display.event(e);
    metrics?.write(e);
  };
  let model: LoadedModel | null = null;
  try {
    const tLoad = performance.now();
    model = await loadPrepared(prepared, flags);
    const loadSeconds = (performance.now() - tLoad) / 1000;
    const prompts = reading.recipes.map((r) => buildPrompt(model!.tokenizer, r.framing, model!.config.bosTokenId));
    const prefix = prompts[0].prefix;
    if (prompts.some((p) => p.prefix.join() !== prefix.join())) {
      throw new Error("the questions' prompts differ before the document");
    }
    // the read is shaped by every question at once: their suffixes together are the observation window
    const patch = prompts.flatMap((p) => p.suffix);
    const { state, cached } = await readOnce(model, prepared, flags, source, {
      prefix,
      patch,
      onEvent,
      reading,
      onMeter: (m) => (meter = m),
    });
    meter = state.meter;
    display.clear();
    if (cached) prepared.say(`answering from ${cached}`);
    const answers = [];
    for (let i = 0; i < reading.recipes.length; i++) {
      const own = reading.recipes.length > 1 ? fork(state) : state;
      meter = own.meter;
      const label = reading.labels?.[i];
      if (label && !flags.json) await writeStdout(`${i > 0 ? "\n" : ""}Q: ${label}\nA: `);
      const answered = await answer(own, prompts[i].suffix, reading.recipes[i], prepared, !flags.json);
      if (answered === null) {
        metrics?.close(true);
        return; // the reader went away (`| head`): stop quietly
      }
      answers.push({ ...answered, summary: own.meter.summary(), label, recipe: reading.recipes[i].name });
    }
    const inputLine = source ? inputReport(source) : `${"state".padEnd(14)}${flags.state}`;
    const totalSeconds = (performance.now() - started) / 1000;
    const last = answers.at(-1)!;
    display.report(last.summary, {
      extra: [
        inputLine,
        ...(answers.length > 1
          ? [
            `${"forks".padEnd(14)}${answers.length} answers from one read, ${
              formatBytes(answers.reduce((a, x) => a + x.summary.kvBytes, 0))
            } KV in all`,
          ]
          : []),
      ],
    });
    if (flags.json) {
      for (const a of answers) {
        const j = jsonResult({
          answer: a.text,
          finish: a.finish,
          recipe: a.recipe,
          model: dir,
          device: device.device,
          adapter: device.adapter,
          gpuKvBytes: device.device === "cpu" ? undefined : model.session.kvFedPeakBytes,
          policy: run.policy.name,
          method: methodJson(run, prepared.config.headDim),
          budget: run.budget,
          chunk: run.chunk,
          positions: run.positions,
          kvDtype: run.kvDtype === "float32" ? "f32" : "f16",
          summary: a.summary,
          source,
          seconds: { load: loadSeconds, total: totalSeconds },
        });
        await writeStdout(JSON.stringify(a.label !== undefined ? { question: a.label, ...j } : j) + "\n");
      }
    }
    metrics?.close(true);
  } catch (err) {
    display.clear();
    metrics?.close(false);
    if (err instanceof StdoutClosed) return;
    throw err;
  } finally {
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGTERM", onTerm);
    await model?.session.close();
  }
}

/** Runs one recipe over one input (`tome summarize`, `tome code`, `tome ask Q INPUT`). */
export function runRecipe(input: string, recipe: Recipe, flags: RunFlags): Promise<void> {
  return runReading(input, { recipes: [recipe] }, flags);
}

/**
 * `tome read`: reads once and saves the state (`--save`), shaped by
 * `questions` (the question patch), or by none; prints the report, or --json.
 */
export async function runRead(
  input: string | null,
  recipe: Recipe,
  questions: Recipe[],
  flags: RunFlags,
): Promise<void> {
  if (!flags.save) throw usage("tome read needs --save FILE");
  const prepared = await prepareRun(input, flags, 1);
  const { source, run, mode } = prepared;
  const display = new Display(mode, {
    budget: run.budget,
    tokenBytes: run.tokenBytes,
    totalBytes: source?.totalBytes ?? null,
    lowTier: lowTierView(run, prepared.config),
  });
  let meter: Meter | null = null;
  const stop = (code: number) => () => {
    removePartialBuilds();
    if (meter) display.report(meter.summary(), { interrupted: true });
    Deno.exit(code);
  };
  const onInt = stop(EXIT.interrupted), onTerm = stop(EXIT.terminated);
  Deno.addSignalListener("SIGINT", onInt);
  Deno.addSignalListener("SIGTERM", onTerm);
  let model: LoadedModel | null = null;
  try {
    const started = performance.now();
    model = await loadPrepared(prepared, flags);
    const prefix = buildPrompt(model.tokenizer, recipe.framing, model.config.bosTokenId).prefix;
    const patch = questions.flatMap((q) => buildPrompt(model!.tokenizer, q.framing, model!.config.bosTokenId).suffix);
    const reading = { recipes: [recipe], questions: questions.map((q) => q.label ?? "") };
    const { state } = await readOnce(model, prepared, flags, source, {
      prefix,
      patch,
      onEvent: (e) => display.event(e),
      reading,
      onMeter: (m) => (meter = m),
    });
    meter = state.meter;
    display.clear();
    const s = state.meter.summary();
    display.report(s, {
      extra: [
        source ? inputReport(source) : `${"state".padEnd(14)}${flags.state}`,
        `${"saved".padEnd(14)}${flags.save}`,
      ],
    });
    if (flags.json) {
      await writeStdout(
        JSON.stringify({
          saved: flags.save,
          policy: run.policy.name,
          method: methodJson(run, prepared.config.headDim),
          budget: run.budget,
          positions: run.positions,
          tokens_read: s.documentTokens,
          kv_bytes: s.kvBytes,
          kv_peak_bytes: s.kvPeakBytes,
          kv_full_bytes: s.fullKvBytes,
          kv_footprint: round(s.footprint, 6),
          kv_footprint_bytes: round(s.footprintBytes, 6),
          state_bytes: (await Deno.stat(flags.save)).size,
          seconds: { total: round((performance.now() - started) / 1000), prefill: round(s.prefillSeconds) },
        }) + "\n",
      );
    }
  } catch (err) {
    display.clear();
    throw err;
  } finally {
    Deno.removeSignalListener("SIGINT", onInt);
    Deno.removeSignalListener("SIGTERM", onTerm);
    await model?.session.close();
  }
}

/**
 * The read every answer forks from: a saved state (`--state`, optionally read
 * further), a cached one (`--cache`), or a fresh read — saved when asked.
 */
async function readOnce(
  model: LoadedModel,
  p: Prepared,
  flags: RunFlags,
  source: Source | null,
  o: {
    prefix: number[];
    patch: number[];
    onEvent: (e: MeterEvent) => void;
    reading: Reading;
    /** Called with the read's meter as soon as it exists (an interrupt reports it). */
    onMeter: (m: Meter) => void;
  },
): Promise<{ state: ReadState; cached: string | null }> {
  const info = (): StateInfo => ({
    run: {
      policy: p.run.policy.name,
      budget: p.run.budget,
      chunk: p.run.chunk,
      positions: p.run.positions,
      kvDtype: p.run.kvDtype,
      window: p.run.window,
      questionPatch: p.run.questionPatch,
      decodeBudget: p.run.plan.decodeBudget ?? null,
      merge: p.run.merge,
      ...runTierOptions(p.run),
    },
    recipe: o.reading.recipes[0].name,
    questions: p.state?.questions ?? o.reading.questions ?? [],
    queryAgnostic: p.state?.queryAgnostic ?? !!p.run.policy.reconstruct,
    prefix: o.prefix,
    input: {
      bytes: (p.state?.input.bytes ?? 0) + (source?.stats.bytes ?? 0),
      files: (p.state?.input.files ?? 0) + (source?.stats.files ?? 0),
      sources: [...(p.state?.input.sources ?? []), ...(source ? [source.label] : [])],
    },
  });
  if (p.state) {
    if (p.state.recipe !== o.reading.recipes[0].name) {
      throw new TomeError(
        "stateInvalid",
        `${flags.state} was read for \`tome ${p.state.recipe}\`, not ${o.reading.recipes[0].name}`,
      );
    }
    const loaded = await loadState(flags.state!, model, o.onEvent, p.run);
    o.onMeter(loaded.sequence.meter);
    const state = await read(source ?? { ids: [] }, { model, run: p.run, question: o.patch, from: loaded.sequence });
    if (flags.save) await saveState(flags.save, model, state.sequence, info(), p.run);
    return { state, cached: source ? null : flags.state! };
  }
  const cachePath = flags.cache && source && source.kind !== "stdin"
    ? statePath({
      input: await inputDigest(source.label),
      model: await modelDigest(model.checkpoint),
      tokenizer: await tokenizerDigest(model.tokenizer.dir),
      run: info().run,
      weights: model.graph.weights,
      prefix: o.prefix,
      patch: p.run.questionPatch ? o.patch : [],
    })
    : null;
  if (flags.cache && source?.kind === "stdin") {
    p.say("--cache: standard input is not cached (it can be read only once)");
  }
  if (cachePath && await Deno.stat(cachePath).then(() => true, () => false)) {
    try {
      const loaded = await loadState(cachePath, model, o.onEvent, p.run);
      o.onMeter(loaded.sequence.meter);
      await touchState(cachePath);
      return {
        state: await read({ ids: [] }, { model, run: p.run, question: o.patch, from: loaded.sequence }),
        cached: cachePath,
      };
    } catch (err) {
      if (!(err instanceof TomeError)) throw err;
      p.say(`cached state ${cachePath} is unusable (${err.message}); reading again`);
      await Deno.remove(cachePath).catch(() => {});
    }
  }
  const fresh = new Meter(p.run.tokenBytes, o.onEvent);
  o.onMeter(fresh);
  const state = await read(source!, { model, run: p.run, prefix: o.prefix, question: o.patch, meter: fresh });
  if (flags.save) await saveState(flags.save, model, state.sequence, info(), p.run);
  if (cachePath) {
    await Deno.mkdir(stateCacheDir(), { recursive: true });
    await saveState(cachePath, model, state.sequence, info(), p.run);
    await gcStates();
  }
  return { state, cached: null };
}

/** Generates one answer, streaming it to stdout when `stream`; null when stdout went away. */
async function answer(
  state: ReadState,
  suffix: number[],
  recipe: Recipe,
  p: Prepared,
  stream: boolean,
): Promise<{ text: string; finish: string } | null> {
  const { temperature, topP } = p.sampling;
  const pieces = generate(state, {
    suffix,
    maxTokens: p.maxTokensFlag ?? recipe.maxTokens,
    sampling: { temperature: temperature ?? recipe.temperature, ...(topP !== undefined ? { topP } : {}) },
    seed: p.seed,
  });
  let text = "";
  try {
    while (true) {
      const next = await pieces.next();
      if (next.done) {
        if (stream && !text.endsWith("\n")) await writeStdout("\n");
        return { text, finish: next.value };
      }
      text += next.value;
      if (stream) await writeStdout(next.value);
    }
  } catch (err) {
    if (err instanceof StdoutClosed) return null;
    throw err;
  }
}

function inputReport(source: Source): string {
  return `${"input".padEnd(14)}${formatBytes(source.stats.bytes).padStart(12)} in ${source.stats.files} file(s)${
    source.stats.replacedChars ? `, ${source.stats.replacedChars} invalid UTF-8 replaced` : ""
  }${source.stats.skipped.length ? `, ${source.stats.skipped.length} skipped` : ""}`;
}

/** The --json object. */
export function jsonResult(r: {
  answer: string;
  finish: string;
  recipe: string;
  model: string;
  device: string;
  /** The WebGPU adapter, on webgpu. */
  adapter?: AdapterInfo;
  /** On a GPU: the most KV bytes one run fed to the device. */
  gpuKvBytes?: number;
  policy: string;
  /** How the run keeps its KV (policy, merge, thin keys, low tier). */
  method: MethodJson;
  budget: number;
  chunk: number;
  positions: string;
  kvDtype: string;
  summary: MeterSummary;
  source: Source | null;
  seconds: { load: number; total: number };
}) {
  const s = r.summary;
  return {
    answer: r.answer,
    finish_reason: r.finish,
    recipe: r.recipe,
    model: r.model,
    device: r.device,
    ...(r.adapter
      ? {
        adapter: {
          vendor: r.adapter.vendor,
          architecture: r.adapter.architecture,
          device: r.adapter.device,
          description: r.adapter.description,
          software: r.adapter.software,
        },
      }
      : {}),
    ...(r.gpuKvBytes === undefined ? {} : { gpu_kv_bytes_per_run_peak: r.gpuKvBytes }),
    policy: r.policy,
    method: r.method,
    budget: r.budget,
    chunk: r.chunk,
    positions: r.positions,
    kv_dtype: r.kvDtype,
    input: {
      bytes: r.source?.stats.bytes ?? 0,
      files: r.source?.stats.files ?? 0,
      replaced_chars: r.source?.stats.replacedChars ?? 0,
    },
    tokens_read: s.documentTokens,
    prompt_tokens: s.promptTokens,
    generated_tokens: s.generatedTokens,
    kept: s.kept,
    evicted: s.evicted,
    kv_bytes: s.kvBytes,
    kv_peak_bytes: s.kvPeakBytes,
    kv_high_bytes: s.kvHighBytes,
    kv_low_bytes: s.kvLowBytes,
    kv_high_peak_bytes: s.kvHighPeakBytes,
    kv_low_peak_bytes: s.kvLowPeakBytes,
    kv_full_bytes: s.fullKvBytes,
    kv_footprint: round(s.footprint, 6),
    kv_footprint_bytes: round(s.footprintBytes, 6),
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
  private constructor(readonly path: string, readonly tmp: TempFile) {}

  static open(path: string): MetricsFile {
    try {
      return new MetricsFile(path, TempFile.create(path));
    } catch (err) {
      throw new TomeError("output", `cannot write --metrics ${path}: ${(err as Error).message}`);
    }
  }

  write(e: MeterEvent): void {
    try {
      this.tmp.writeAllSync(new TextEncoder().encode(JSON.stringify(e) + "\n"));
    } catch (err) {
      throw new TomeError("output", `cannot write --metrics ${this.path}: ${(err as Error).message}`);
    }
  }

  /** Keeps the file (success, or an interrupted run's record) or removes it (an error). */
  close(keep: boolean): void {
    if (keep) this.tmp.commit(false);
    else this.tmp.discard();
  }
}
