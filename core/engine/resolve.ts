/**
 * One resolved run: user options (a budget in entries or bytes, a policy by
 * name, the question patch, positions auto/original/compact, the KV dtype)
 * turned into the decisions every reader shares — the CLI, `read()`,
 * `tome estimate` and `tome eval` all resolve through here.
 */
import { TomeError } from "../errors.ts";
import { kvBytesPerToken, type KvDtype, kvElementBytes, type ModelConfig, type PositionMode } from "../model/config.ts";
import { DEFAULT_POLICY, makePolicy, type Policy, type PolicyOptions } from "../policies/mod.ts";
import { DROP, makeMerger } from "../policies/merge/mod.ts";
import { type BudgetSpec, checkEntries, parseEntries, readBudgetSpec } from "./budget.ts";
import { type BudgetPlan, checkPlan, planBudgets } from "./plan.ts";
import type { KeyChannels } from "./thin_keys.ts";
import { DEFAULT_WINDOW } from "./prefill.ts";
import type { KvQuantSpec } from "../../kernels/kv_quant.ts";
import type { LowTier } from "../model/onnx/low_tier.ts";
import { lowEntryBytes, sameBytesBudget } from "./low_store.ts";

/**
 * Document tokens per prefill run unless told otherwise. Chosen by measurement
 * (`bench/engine.ts --part chunks`, 360M shape, snapkv at budget 1024, 2 cores):
 * chunk 128 → 162 tok/s, 256 → 170, 512 → 184, 1024 → 176.
 */
export const DEFAULT_CHUNK = 512;
/**
 * The chunk with q8/q4 weights. Measured like for like (`bench/peers/tome_run.ts`, 360M shape, 4K tokens, snapkv
 * 1024, 2 threads, quiet machine, runs alternated): at q8 chunks of 256 read as fast as chunks of 512 (prefill
 * 12.4–13.3 s vs 12.7–13.7 s) and peak 130–140 MB lower (onnxruntime's working memory for the attention blocks
 * halves); at f32 they are 7% slower, so f32 keeps {@link DEFAULT_CHUNK}.
 */
export const QUANTIZED_CHUNK = 256;

/** Document tokens per prefill run for a graph's weight type, unless told otherwise. */
export function defaultChunk(weights?: string): number {
  return weights === "q8" || weights === "q4" ? QUANTIZED_CHUNK : DEFAULT_CHUNK;
}
/** Entries per layer and KV head unless told otherwise. */
export const DEFAULT_BUDGET = 1024;

/** What a user says about a run. */
export interface RunOptions {
  /** Eviction policy by name (`pyramid:NAME` too) or as an object (default snapkv). */
  policy?: string | Policy;
  /** Options of policies that read files (duo's head mask). */
  policyOptions?: PolicyOptions;
  /** Entries per layer and KV head, or a size such as "256MiB". */
  budget?: number | string;
  /** Document tokens per prefill run (default: {@link defaultChunk} of `weights`). */
  chunk?: number;
  /** The graph's weight type (f32, q8, …): it picks the default chunk. */
  weights?: string;
  positions?: PositionMode | "auto";
  kvDtype?: KvDtype;
  /** Entries per layer and KV head kept while generating (default: the cache grows with the answer). */
  decodeBudget?: number;
  /** Ride the question along each chunk (default: when a question is known and the policy scores with attention). */
  questionPatch?: boolean;
  /**
   * The question's tokens, when known here (`read()` passes its own). A size budget with thin keys counts each
   * head's window whole unless a question patch will ride along (then no entry stays whole); unknown: whole.
   */
  question?: ArrayLike<number>;
  /** Observation window when there is no question patch. */
  window?: number;
  sinks?: number;
  recent?: number;
  /** Locret retaining heads the model is loaded with (a policy that reads them needs them). */
  retainingHeads?: string;
  /**
   * Fold evicted entries into kept ones: `d2o`, `kvmerger`, `anchors`, `ems` (default none: the policy's own
   * merge, which only EMS has, else drop them; `drop` drops them under EMS too).
   */
  merge?: string;
  /**
   * Thin keys (ThinK): the fraction of key channels in (0, 1] each KV head keeps
   * for all but its newest `window` entries, ⌈fraction·d⌉ channels (default 1: off).
   */
  keyChannels?: number;
  /**
   * MiKV (arXiv 2402.18096): keep evicted entries in a low tier at `int4` or `int2` instead of dropping them
   * (original positions only; not with merging or thin keys).
   */
  keepEvicted?: LowTier;
  /**
   * The low tier's entries per layer and KV head, or a size such as "64MiB" (all layers); default: as many as fit
   * in the high tier's bytes.
   */
  lowBudget?: number | string;
}

/** MiKV's low tier of a run: how entries are stored and how many each layer and KV head keeps. */
export interface LowTierRun {
  tier: LowTier;
  spec: KvQuantSpec;
  /** Entries per layer and KV head. */
  budget: number;
  /** Bytes of one low entry (a key and a value of one head). */
  entryBytes: number;
}

/** Channels per quantization group of the low tier: 32, or the whole head when 32 does not divide it. */
export const LOW_GROUP = 32;

/** What is known of the input before reading it, for `positions: auto`. */
export interface InputSize {
  /** Tokens of everything the run feeds (prompt, document, answer), when counted. */
  tokens?: number;
  /** Bytes of the document, when known, and tokens beyond it (prompt framing, the answer). */
  bytes?: number | null;
  extraTokens?: number;
}

/** Every decision a run needs, made once. */
export interface ResolvedRun {
  policy: Policy;
  /** Mean entries per layer and KV head while reading. */
  budget: number;
  plan: BudgetPlan;
  chunk: number;
  positions: PositionMode;
  kvDtype: KvDtype;
  bytesPerElement: number;
  /** KV bytes of one token over all layers and heads. */
  tokenBytes: number;
  /** Observation window without the patch; whether the patch rides along when a question is known. */
  window: number;
  questionPatch: boolean;
  /**
   * The merge method's name, null when evicted entries are dropped (`drop` when a policy's own merge was turned
   * off); the merger itself rides on the plan's rules.
   */
  merge: string | null;
  /** Thin keys: channels kept and the whole window, null when every key keeps all channels. */
  keyChannels: KeyChannels | null;
  /** MiKV's low tier, null when evicted entries are dropped (or merged). */
  lowTier: LowTierRun | null;
}

/** Resolves user options for a model; every bad option is a usage error here, before any model work. */
export async function resolveRun(config: ModelConfig, o: RunOptions, input: InputSize = {}): Promise<ResolvedRun> {
  const policy = typeof o.policy === "object"
    ? o.policy
    : await makePolicy(o.policy ?? DEFAULT_POLICY, config, o.policyOptions);
  if (policy.retain && !o.retainingHeads) {
    throw new TomeError("usage", `--policy ${policy.name} needs --retaining-heads FILE`);
  }
  const kvDtype = o.kvDtype ?? "float16";
  const bytesPerElement = kvElementBytes(kvDtype);
  const budgetSpec = readBudgetSpec(o.budget ?? DEFAULT_BUDGET, "budget");
  const chunk = positiveInt(o.chunk ?? defaultChunk(o.weights), "chunk");
  const window = positiveInt(o.window ?? DEFAULT_WINDOW, "window");
  const decodeBudget = o.decodeBudget === undefined ? undefined : positiveInt(o.decodeBudget, "decode budget");
  for (const [name, v] of [["sinks", o.sinks], ["recent", o.recent]] as const) {
    if (v !== undefined && !(Number.isInteger(v) && v >= 0)) {
      throw new TomeError("usage", `${name} must be an integer ≥ 0, got ${v}`);
    }
  }
  const merger = makeMerger(o.merge, policy);
  const keyChannels = thinKeys(o.keyChannels, config.headDim, window);
  if (keyChannels && merger) {
    throw new TomeError("usage", "--key-channels does not combine with merging (--merge, or --policy ems)");
  }
  const low = lowTierSpec(o, config, kvDtype, policy);
  if (low && (merger || keyChannels)) {
    throw new TomeError("usage", "--keep-evicted does not combine with merging or --key-channels");
  }
  const tokenBytes = kvBytesPerToken(config, bytesPerElement);
  const questionPatch = (o.questionPatch ?? true) && policy.attention;
  // thin keys stay whole in the window only when no question patch rides along
  const whole = keyChannels && !(questionPatch && (o.question?.length ?? 0) > 0) ? keyChannels.window : 0;
  const { budget, lowTier } = tierBudgets(
    budgetSpec,
    o,
    config,
    tokenBytes,
    keyChannels && { ...keyChannels, window: whole },
    low,
  );
  const plan = planBudgets(policy, config, {
    budget,
    decodeBudget,
    sinks: o.sinks,
    recent: o.recent,
    merge: merger,
    ...(keyChannels ? { keyChannels } : {}),
  });
  checkPlan(plan, window, questionPatch);
  const positions = choosePositions(o.positions ?? "auto", input, config.maxPositions);
  if (lowTier && positions === "compact") {
    throw new TomeError(
      "usage",
      "--keep-evicted needs original positions (--positions original, and an input within the model's context)",
    );
  }
  return {
    policy,
    budget,
    plan,
    chunk,
    positions,
    kvDtype,
    bytesPerElement,
    tokenBytes,
    window,
    questionPatch,
    merge: policy.keepsAll ? null : merger ? merger.name : policy.merger ? DROP : null,
    keyChannels,
    lowTier,
  };
}

/** `--keep-evicted` → how the low tier stores entries, or null (none asked for, or a policy that evicts nothing). */
function lowTierSpec(
  o: RunOptions,
  config: ModelConfig,
  kvDtype: KvDtype,
  policy: Policy,
): Omit<LowTierRun, "budget"> | null {
  if (o.keepEvicted === undefined) {
    if (o.lowBudget !== undefined) throw new TomeError("usage", "--low-budget needs --keep-evicted int4|int2");
    return null;
  }
  if (o.keepEvicted !== "int4" && o.keepEvicted !== "int2") {
    throw new TomeError("usage", `--keep-evicted takes int4 or int2, got ${o.keepEvicted}`);
  }
  if (policy.keepsAll) return null;
  const d = config.headDim;
  const spec: KvQuantSpec = {
    bits: o.keepEvicted === "int4" ? 4 : 2,
    group: d % LOW_GROUP === 0 ? LOW_GROUP : d,
    params: kvDtype,
  };
  return { tier: o.keepEvicted, spec, entryBytes: lowEntryBytes(d, spec) };
}

/**
 * Entries per layer and KV head for each tier. A count is the high tier's entries, and the low tier gets
 * `--low-budget` (default: as many low entries as fit in the high tier's bytes). A size is the KV bytes the whole
 * cache may hold after each step, whatever the method, so methods compare at equal memory: with a low tier,
 * `--low-budget` (default: half the size) and the high tier the rest; with thin keys, as many entries as fit with
 * each head's newest `window` whole (0 when a question patch rides along) and the rest at `channels` key channels;
 * otherwise size ÷ token bytes.
 */
function tierBudgets(
  spec: BudgetSpec,
  o: RunOptions,
  config: ModelConfig,
  tokenBytes: number,
  thin: KeyChannels | null,
  low: Omit<LowTierRun, "budget"> | null,
): { budget: number; lowTier: LowTierRun | null } {
  const written = o.budget ?? DEFAULT_BUDGET;
  const slots = config.layers * config.kvHeads;
  if (spec.bytes === undefined) {
    const budget = checkEntries(spec.entries, written, "budget", 1);
    if (!low) return { budget, lowTier: null };
    const lowBudget = o.lowBudget === undefined
      ? sameBytesBudget(budget, config.headDim, tokenBytes / (slots * 2 * config.headDim), low.spec)
      : parseEntries(o.lowBudget, slots * low.entryBytes, "--low-budget", 0);
    return { budget, lowTier: { ...low, budget: lowBudget } };
  }
  if (low) {
    const lowBudget = o.lowBudget === undefined
      ? Math.floor(spec.bytes / 2 / (slots * low.entryBytes))
      : parseEntries(o.lowBudget, slots * low.entryBytes, "--low-budget", 0);
    const highBytes = spec.bytes - lowBudget * slots * low.entryBytes;
    const budget = checkEntries(Math.floor(Math.max(0, highBytes) / tokenBytes), written, "budget", 1);
    return { budget, lowTier: { ...low, budget: lowBudget } };
  }
  if (thin) {
    // a thin entry: k key channels and a whole value, for d + d whole
    const thinBytes = (tokenBytes * (thin.channels + config.headDim)) / (2 * config.headDim);
    const wholeBytes = thin.window * tokenBytes;
    const n = spec.bytes < wholeBytes
      ? Math.floor(spec.bytes / tokenBytes)
      : thin.window + Math.floor((spec.bytes - wholeBytes) / thinBytes);
    return { budget: checkEntries(n, written, "budget", 1), lowTier: null };
  }
  return { budget: checkEntries(Math.floor(spec.bytes / tokenBytes), written, "budget", 1), lowTier: null };
}

/** `--key-channels`: a fraction in (0, 1] → ⌈fraction·d⌉ channels with the window whole; null when that is all d. */
function thinKeys(fraction: number | undefined, d: number, window: number): KeyChannels | null {
  if (fraction === undefined) return null;
  if (!(Number.isFinite(fraction) && fraction > 0 && fraction <= 1)) {
    throw new TomeError("usage", `key channels must be a fraction in (0, 1], got ${fraction}`);
  }
  const channels = Math.ceil(fraction * d - 1e-9);
  return channels >= d ? null : { channels, window };
}

/**
 * `auto` is original positions when the run fits the model's context: by its
 * token count when known, else by the document's bytes (a token is at least a
 * byte) plus the extra tokens; compact otherwise, and when nothing is known.
 */
export function choosePositions(mode: PositionMode | "auto", input: InputSize, maxPositions: number): PositionMode {
  if (mode !== "auto") return mode;
  const need = input.tokens !== undefined
    ? input.tokens
    : input.bytes !== undefined && input.bytes !== null
    ? input.bytes + (input.extraTokens ?? 0)
    : Infinity;
  return need <= maxPositions ? "original" : "compact";
}

/**
 * Tokens that ride along each chunk of `c` document tokens: KVzip's
 * reconstruction (`repeatTokens` + the chunk again), else the question patch
 * when it applies.
 */
export function patchTokens(run: ResolvedRun, questionTokens: number, repeatTokens: number): (c: number) => number {
  if (run.policy.reconstruct) return (c) => repeatTokens + c;
  return () => (run.questionPatch ? questionTokens : 0);
}

function positiveInt(n: number, what: string): number {
  if (!Number.isInteger(n) || n < 1) throw new TomeError("usage", `${what} must be a positive integer, got ${n}`);
  return n;
}
