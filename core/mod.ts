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
import { type LoadedModel, loadModel } from "./engine/model.ts";
import { DEFAULT_WINDOW, Prefill } from "./engine/prefill.ts";
import { parseBudget } from "./engine/budget.ts";
import { TomeError } from "./errors.ts";
import type { Source } from "./input/source.ts";
import { Meter, type MeterEvent } from "./meter/meter.ts";
import { kvBytesPerToken } from "./model/config.ts";
import { DEFAULT_POLICY, makePolicy, type Policy, type PolicyOptions } from "./policies/mod.ts";
import { tokenize } from "./tokens/stream.ts";
import type { SamplingOptions } from "../kernels/sample.ts";

export { loadModel };
export type { FinishReason, LoadedModel, MeterEvent };
export type { MeterSummary } from "./meter/meter.ts";

/**
 * Document tokens per prefill run unless told otherwise. Chosen by measurement
 * (`bench/engine.ts --part chunks`, 360M shape, snapkv at budget 1024, 2 cores):
 * chunk 128 → 162 tok/s, 256 → 170, 512 → 184, 1024 → 176.
 */
export const DEFAULT_CHUNK = 512;
/** Entries per layer and KV head unless told otherwise. */
export const DEFAULT_BUDGET = 1024;

export interface ReadOptions {
  model: LoadedModel;
  /** Eviction policy (default snapkv). */
  policy?: string | Policy;
  /** Options of policies that read files (duo's head mask). */
  policyOptions?: PolicyOptions;
  /** Entries per layer and KV head, or a size such as "256MiB". */
  budget?: number | string;
  chunk?: number;
  /** Token ids before the document (a chat template's head). */
  prefix?: number[];
  /** The question or instruction as token ids: the observation window of the question patch. */
  question?: number[];
  /** Ride the question along each chunk (default: when known and the policy scores with attention). */
  questionPatch?: boolean;
  /** Observation window when there is no question patch. */
  window?: number;
  sinks?: number;
  recent?: number;
  onEvent?: (e: MeterEvent) => void;
}

/** A document read into a compressed cache, ready to generate from. */
export interface ReadState {
  model: LoadedModel;
  prefill: Prefill;
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
  const policy = typeof opts.policy === "object"
    ? opts.policy
    : await makePolicy(opts.policy ?? DEFAULT_POLICY, model.config, opts.policyOptions);
  if (policy.retain && !model.graph.retainingHeads) {
    throw new TomeError(
      "usage",
      `policy ${policy.name} needs the model loaded with retaining heads (--retaining-heads FILE)`,
    );
  }
  const bytesPerElement = model.graph.kvDtype === "float32" ? 4 : 2;
  const budget = parseBudget(opts.budget ?? DEFAULT_BUDGET, model.config, bytesPerElement);
  const chunk = opts.chunk ?? DEFAULT_CHUNK;
  if (!Number.isInteger(chunk) || chunk < 1) {
    throw new TomeError("usage", `chunk must be a positive integer, got ${chunk}`);
  }
  const window = opts.window ?? DEFAULT_WINDOW;
  const store = new KvStore(model.config, model.graph.kvDtype);
  const meter = new Meter(kvBytesPerToken(model.config, bytesPerElement), opts.onEvent);
  const prefill = new Prefill(model.session, store, {
    policy,
    budget,
    chunk,
    question: opts.question,
    questionPatch: opts.questionPatch,
    window,
    sinks: opts.sinks,
    recent: opts.recent,
  }, meter);
  if (!policy.keepsAll) {
    const p = policy.protect(budget, prefill.patch ? opts.question!.length : window, prefill.patch);
    const min = Math.min(...prefill.budgets);
    if ((opts.sinks ?? p.sinks) + (opts.recent ?? p.recent) > min) {
      throw new TomeError("usage", `budget ${min} is smaller than the entries ${policy.name} protects`);
    }
  }
  const source = typeof input === "object" && "stats" in input ? input : null;
  let tokenized = 0;
  const progress = () => ({ bytes: source?.stats.bytes ?? 0, totalBytes: source?.totalBytes ?? null, tokenized });
  meter.framing(opts.prefix?.length ?? 0);
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
  const retained = (l: number, h: number) => {
    const layer = store.layers[l];
    return layer.positions.slice(h * layer.capacity, h * layer.capacity + layer.lengths[h]);
  };
  return { model, prefill, meter, policy, budget, chunk, retained };
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
  /** Evict while generating: entries per layer and KV head kept (default: the cache grows with the answer). */
  decodeBudget?: number;
}

/** Generates the answer from a read document, as text pieces. */
export function generate(state: ReadState, opts: GenerateOptions): AsyncGenerator<string, FinishReason> {
  const g = state.model.generation;
  return decode(state.prefill, state.model.tokenizer, {
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
    decodeBudget: opts.decodeBudget,
  });
}
