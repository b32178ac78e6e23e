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
}

export interface KvPrediction {
  /** Peak KV bytes while reading, and over the whole run (the answer running to maxTokens). */
  prefillPeakBytes: number;
  peakBytes: number;
  /** KV bytes held after reading. */
  afterReadBytes: number;
  /** KV bytes the full cache would need for the whole run. */
  fullBytes: number;
  chunks: number;
}

/** Replays the run's budgets over entry counts alone. */
export function predictKv(p: KvRun): KvPrediction {
  const { layers: L, kvHeads: K, headDim: d } = p.config;
  const entryBytes = d * 2 * p.bytesPerElement;
  const len = Array.from({ length: L }, () => new Array<number>(K).fill(0));
  const entries = () => len.reduce((a, row) => a + row.reduce((x, y) => x + y, 0), 0);
  const each = (f: (n: number, l: number, h: number) => number) => {
    for (let l = 0; l < L; l++) for (let h = 0; h < K; h++) len[l][h] = f(len[l][h], l, h);
  };
  const sequence = p.prefixTokens + p.documentTokens;
  let peak = 0;
  let chunks = 0;
  for (let at = 0; at < sequence; at += p.chunk) {
    const c = Math.min(p.chunk, sequence - at);
    const patch = typeof p.patchTokens === "function" ? p.patchTokens(c) : p.patchTokens;
    peak = Math.max(peak, (entries() + (c + patch) * L * K) * entryBytes);
    each((n, l, h) => Math.min(p.plan.prefill.keep(l, h), n + c));
    chunks++;
  }
  const prefillPeak = peak;
  const afterRead = entries() * entryBytes;
  // decode: the suffix is appended, then every generated token but the last is fed back
  for (let i = 0; i < p.suffixTokens; i++) {
    each((n) => n + 1);
    peak = Math.max(peak, entries() * entryBytes);
  }
  const decode = p.plan.decode;
  for (let i = 0; i + 1 < p.maxTokens; i++) {
    each((n, l, h) => (decode ? Math.min(decode.keep(l, h), n + 1) : n + 1));
    peak = Math.max(peak, entries() * entryBytes);
  }
  const total = sequence + p.suffixTokens + Math.max(0, p.maxTokens - 1);
  return {
    prefillPeakBytes: prefillPeak,
    peakBytes: peak,
    afterReadBytes: afterRead,
    fullBytes: total * L * K * entryBytes,
    chunks,
  };
}
