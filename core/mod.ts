/**
 * tome's library entry point: read a document of any length into a KV cache
 * of fixed size, then generate from it.
 *
 * @example
 * const model = await loadModel("/path/to/checkpoint");
 * const state = await read("a long text …", { model, budget: 1024, question: model.tokenizer.encode("Who?") });
 * for await (const text of generate(state, { suffix: model.tokenizer.encode(" Answer:") })) console.log(text);
 */
import { decode, type FinishReason } from "./engine/decode.ts";
import { KvStore } from "./engine/kv_store.ts";
import { LowStore } from "./engine/low_store.ts";
import { type LoadedModel, loadModel } from "./engine/model.ts";
import { Prefill } from "./engine/prefill.ts";
import { checkPlan } from "./engine/plan.ts";
import { type ResolvedRun, resolveRun, type RunOptions } from "./engine/resolve.ts";
import { Sequence } from "./engine/sequence.ts";
import type { Source } from "./input/source.ts";
import { Meter, type MeterEvent } from "./meter/meter.ts";
import type { Policy } from "./policies/mod.ts";
import { KVZIP_PROMPT } from "./policies/kvzip.ts";
import { tokenize } from "./tokens/stream.ts";
import type { SamplingOptions } from "../kernels/sample.ts";

export { loadModel, resolveRun, Sequence };
export { loadState, readStateHeader, saveState } from "./state/file.ts";
export type { LoadedState, StateHeader, StateInfo } from "./state/file.ts";
export { DEFAULT_BUDGET, DEFAULT_CHUNK, defaultChunk, QUANTIZED_CHUNK } from "./engine/resolve.ts";
export type { FinishReason, LoadedModel, MeterEvent, ResolvedRun, RunOptions };
export { Meter } from "./meter/meter.ts";
export type { MeterSummary } from "./meter/meter.ts";

export interface ReadOptions extends Omit<RunOptions, "positions" | "kvDtype" | "retainingHeads" | "weights"> {
  model: LoadedModel;
  /** A run already resolved for this model (its options above are then ignored). */
  run?: ResolvedRun;
  /** Token ids before the document (a chat template's head). */
  prefix?: number[];
  /** The question or instruction as token ids: the observation window of the question patch. */
  question?: number[];
  onEvent?: (e: MeterEvent) => void;
  /** A meter of the caller's (default: a new one reporting to `onEvent`). */
  meter?: Meter;
  /** Go on reading after this sequence (a loaded state, or a fork) instead of starting empty; no prefix then. */
  from?: Sequence;
}

/** A document read into a compressed cache, ready to generate from. */
export interface ReadState {
  model: LoadedModel;
  run: ResolvedRun;
  sequence: Sequence;
  meter: Meter;
  policy: Policy;
  budget: number;
  chunk: number;
  /** Original positions of the entries layer `l`, KV head `h` retains, in order. */
  retained(l: number, h: number): Int32Array;
}

/** Input to {@link read}: text, a stream of text, an opened input, or token ids. */
export type ReadInput = string | ReadableStream<string> | Source | { ids: ArrayLike<number> };

/** Reads text (a string, a stream of segments, or an opened input) through chunked prefill with eviction. */
export async function read(input: ReadInput, opts: ReadOptions): Promise<ReadState> {
  const { model } = opts;
  const run = opts.run ?? await resolveRun(model.config, {
    ...opts,
    positions: model.graph.positions,
    kvDtype: model.graph.kvDtype,
    weights: model.graph.weights,
    retainingHeads: model.graph.retainingHeads,
  });
  if (run.lowTier && run.lowTier.tier !== model.graph.lowTier) {
    throw new Error(
      `the run keeps evicted entries at ${run.lowTier.tier}, the model's graph does not (loadModel lowTier)`,
    );
  }
  if (run.positions !== model.graph.positions || run.kvDtype !== model.graph.kvDtype) {
    throw new Error(`the run was resolved for ${run.positions}/${run.kvDtype}, the model's graph is not`);
  }
  const question = run.questionPatch && (opts.question?.length ?? 0) > 0 ? opts.question! : [];
  const repeat = run.policy.reconstruct ? model.tokenizer.encode(KVZIP_PROMPT) : [];
  const patch = run.policy.reconstruct ? (chunk: Int32Array) => [...repeat, ...chunk] : question;
  checkPlan(run.plan, question.length || run.window, question.length > 0 || repeat.length > 0);
  const sequence = opts.from ??
    new Sequence(
      model.session,
      new KvStore(model.config, run.kvDtype, run.keyChannels ?? undefined),
      opts.meter ?? new Meter(run.tokenBytes, opts.onEvent),
      run.lowTier ? new LowStore(model.config, run.lowTier.spec, () => run.lowTier!.budget) : undefined,
    );
  const meter = sequence.meter;
  const prefill = new Prefill(sequence, { plan: run.plan, chunk: run.chunk, patch, window: run.window });
  const source = typeof input === "object" && "stats" in input ? input : null;
  let tokenized = 0;
  const progress = () => ({ bytes: source?.stats.bytes ?? 0, totalBytes: source?.totalBytes ?? null, tokenized });
  if (opts.from && opts.prefix?.length) throw new Error("a continued read has its prefix already");
  if (!opts.from) meter.framing(opts.prefix?.length ?? 0);
  if (opts.prefix?.length) await prefill.push(opts.prefix, progress());
  if (typeof input === "object" && "ids" in input) {
    await prefill.push(input.ids, progress());
  } else {
    const text = typeof input === "string"
      ? ReadableStream.from([input])
      : source
      ? source.text
      : (input as ReadableStream<string>);
    for await (const ids of text.pipeThrough(tokenize(model.tokenizer))) {
      tokenized += ids.length;
      await prefill.push(ids, progress());
    }
  }
  await prefill.end(progress());
  return {
    model,
    run,
    sequence,
    meter,
    policy: run.policy,
    budget: run.budget,
    chunk: run.chunk,
    retained: (l, h) => sequence.retained(l, h),
  };
}

/** An independent copy of a read state (its own cache, cursor and meter): one read, several answers. */
export function fork(state: ReadState): ReadState {
  const sequence = state.sequence.fork();
  return { ...state, sequence, meter: sequence.meter, retained: (l, h) => sequence.retained(l, h) };
}

export interface GenerateOptions {
  /** Token ids after the document: the question or instruction and the template's tail. */
  suffix: number[];
  maxTokens?: number;
  /** Defaults: the model's generation_config.json (greedy unless it samples). */
  sampling?: Partial<SamplingOptions>;
  seed?: number;
  stop?: string[];
  /** Extra end-of-sequence ids (the model's are always used). */
  eos?: number[];
  /** Called with each generated token id. */
  onToken?: (id: number) => void;
  /** Called with the logits each token is sampled from. */
  onLogits?: (logits: Float32Array) => void;
}

/** Generates the answer from a read document, as text pieces; evicts while generating when the run has a decode budget. */
export function generate(state: ReadState, opts: GenerateOptions): AsyncGenerator<string, FinishReason> {
  const g = state.model.generation;
  return decode(state.sequence, state.run.plan, state.model.tokenizer, {
    suffix: opts.suffix,
    maxTokens: opts.maxTokens ?? g.maxNewTokens ?? 256,
    sampling: {
      temperature: g.temperature,
      topK: g.topK,
      topP: g.topP,
      repetitionPenalty: g.repetitionPenalty,
      ...opts.sampling,
    },
    seed: opts.seed ?? 0,
    eos: [...new Set([...g.eos, ...(opts.eos ?? [])])],
    stop: opts.stop ?? [],
    onToken: opts.onToken,
    onLogits: opts.onLogits,
  });
}
