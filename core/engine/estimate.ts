/**
 * The KV memory a run will need, predicted without running the model: the
 * retained entries of every layer and KV head follow from the token count, the
 * chunk size and the budget plan alone (each head keeps min(its count, what it
 * had + the chunk)), so the peak the meter will report can be computed exactly.
 */
import type { ModelConfig } from "../model/config.ts";
import type { BudgetPlan } from "./plan.ts";

export interface KvRun {
  config: ModelConfig;
  plan: BudgetPlan;
  bytesPerElement: number;
  /** Framing tokens before the document, and the document's tokens. */
  prefixTokens: number;
  documentTokens: number;
  chunk: number;
  /** Tokens riding along each chunk of `c` tokens (the question patch, or KVzip's reconstruction), 0 without. */
  patchTokens: number | ((c: number) => number);
  /** Tokens prefilled after the document, and the most tokens generated. */
  suffixTokens: number;
  maxTokens: number;
  /** MiKV's low tier: entries per layer and KV head, and bytes an entry. */
  low?: { budget: number; entryBytes: number; promote: boolean };
}

export interface KvPrediction {
  /** Peak KV bytes while reading, and over the whole run (the answer running to maxTokens). */
  prefillPeakBytes: number;
  peakBytes: number;
  /** KV bytes held after reading, and at the end (the answer at maxTokens). */
  afterReadBytes: number;
  endBytes: number;
  /** KV bytes the full cache would need for the whole run. */
  fullBytes: number;
  chunks: number;
  /**
   * The same per tier, as the meter counts them: the high tier (the cache, thin keys at their kept channels; its
   * peak includes a run's entries in flight) and MiKV's low tier (0 without one). Each tier's peak is its own most.
   */
  high: KvTierPrediction;
  low: KvTierPrediction;
}

/** One tier's predicted KV bytes. */
export interface KvTierPrediction {
  peakBytes: number;
  afterReadBytes: number;
  endBytes: number;
}

/**
 * Replays the run's budgets over entry counts alone. With thin keys (the
 * rules' `keyChannels`) every step that evicts leaves each head's newest
 * `window` entries whole (none when a patch rides along) and the rest at k
 * channels; the plan protects that window, so which entries stay whole
 * follows from counts, whatever is scored. Appended entries stay whole.
 * With a low tier (MiKV) a step selects among retained, low and new entries
 * and what it does not keep stays in or moves to the low tier, up to its
 * budget, so both counts per head follow from counts too.
 */
export function predictKv(p: KvRun): KvPrediction {
  const { layers: L, kvHeads: K, headDim: d } = p.config;
  const entryBytes = d * 2 * p.bytesPerElement;
  const kc = p.plan.prefill.keyChannels;
  const len = Array.from({ length: L }, () => new Array<number>(K).fill(0));
  /** Thin entries per layer and head. */
  const thin = Array.from({ length: L }, () => new Array<number>(K).fill(0));
  /** Low-tier entries per layer and head. */
  const low = Array.from({ length: L }, () => new Array<number>(K).fill(0));
  const sum = (a: number[][]) => a.reduce((x, row) => x + row.reduce((y, z) => y + z, 0), 0);
  /** Bytes held in the high tier (thin entries' keys are `d − k` elements short) and the low tier. */
  const highHeld = () => (sum(len) * 2 * d - (kc ? sum(thin) * (d - kc.channels) : 0)) * p.bytesPerElement;
  const lowHeld = () => (p.low ? sum(low) * p.low.entryBytes : 0);
  const held = () => highHeld() + lowHeld();
  let highPeak = 0, lowPeak = 0;
  /** Each tier's peak after a step (a chunk's entries in flight are added before it). */
  const tierPeaks = () => {
    highPeak = Math.max(highPeak, highHeld());
    lowPeak = Math.max(lowPeak, lowHeld());
  };
  /**
   * One step for every head: `f` gives its new count. A step that evicts (`whole` defined) leaves whole the
   * newest `whole` kept entries that were whole (of the old ones and the `fresh`), the rest thin.
   */
  const each = (f: (n: number, l: number, h: number) => number, whole?: number, fresh = 0, evicts = false) => {
    for (let l = 0; l < L; l++) {
      for (let h = 0; h < K; h++) {
        const wholeBefore = len[l][h] - thin[l][h] + fresh;
        if (p.low && evicts) {
          // the step selects among retained, low and new entries (promotion, unless the policy shares one
          // selection across heads); what it does not keep goes to the low tier, up to its budget
          const Q = p.low.promote ? low[l][h] : 0;
          const considered = len[l][h] + Q + fresh;
          len[l][h] = f(len[l][h] + Q, l, h);
          low[l][h] = Math.min(p.low.budget, low[l][h] - Q + considered - len[l][h]);
        } else len[l][h] = f(len[l][h], l, h);
        if (kc && whole !== undefined) thin[l][h] = len[l][h] - Math.min(len[l][h], whole, wholeBefore);
      }
    }
  };
  const sequence = p.prefixTokens + p.documentTokens;
  let peak = 0;
  let chunks = 0;
  for (let at = 0; at < sequence; at += p.chunk) {
    const c = Math.min(p.chunk, sequence - at);
    const patch = typeof p.patchTokens === "function" ? p.patchTokens(c) : p.patchTokens;
    peak = Math.max(peak, held() + (c + patch) * L * K * entryBytes);
    highPeak = Math.max(highPeak, highHeld() + (c + patch) * L * K * entryBytes);
    each((n, l, h) => Math.min(p.plan.prefill.keep(l, h), n + c), patch > 0 ? 0 : kc?.window, c, true);
    tierPeaks();
    chunks++;
  }
  const prefillPeak = peak;
  const afterRead = held();
  const afterReadHigh = highHeld(), afterReadLow = lowHeld();
  // decode: the suffix is appended, then every generated token but the last is fed back
  for (let i = 0; i < p.suffixTokens; i++) {
    each((n) => n + 1);
    peak = Math.max(peak, held());
    tierPeaks();
  }
  const decode = p.plan.decode;
  for (let i = 0; i + 1 < p.maxTokens; i++) {
    each(
      (n, l, h) => (decode ? Math.min(decode.keep(l, h), n + 1) : n + 1),
      decode ? kc?.window : undefined,
      1,
      !!decode,
    );
    peak = Math.max(peak, held());
    tierPeaks();
  }
  const total = sequence + p.suffixTokens + Math.max(0, p.maxTokens - 1);
  return {
    prefillPeakBytes: prefillPeak,
    peakBytes: peak,
    afterReadBytes: afterRead,
    endBytes: held(),
    fullBytes: total * L * K * entryBytes,
    chunks,
    high: { peakBytes: highPeak, afterReadBytes: afterReadHigh, endBytes: highHeld() },
    low: { peakBytes: lowPeak, afterReadBytes: afterReadLow, endBytes: lowHeld() },
  };
}
