/**
 * The KV memory a run will need, predicted without running the model: the
 * retained entries of every layer and KV head follow from the token count, the
 * chunk size and the budgets alone (each head keeps min(budget, what it had +
 * the chunk)), so the peak the meter will report can be computed exactly.
 */
import type { ModelConfig } from "../model/config.ts";
import type { Policy } from "../policies/policy.ts";

export interface KvPlan {
  config: ModelConfig;
  policy: Policy;
  /** Mean entries per layer and head. */
  budget: number;
  bytesPerElement: number;
  /** Framing tokens before the document, and the document's tokens. */
  prefixTokens: number;
  documentTokens: number;
  chunk: number;
  /** Tokens riding along each chunk (the question patch), 0 without it. */
  patchTokens: number;
  /** Tokens prefilled after the document, and the most tokens generated. */
  suffixTokens: number;
  maxTokens: number;
  decodeBudget?: number;
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

export function predictKv(p: KvPlan): KvPrediction {
  const { layers: L, kvHeads: K, headDim: d } = p.config;
  const entryBytes = d * 2 * p.bytesPerElement;
  const budgets = p.policy.budgets?.(p.budget, L) ?? new Array(L).fill(p.budget);
  const headBudget = (l: number, h: number) =>
    p.policy.keepsAll ? Infinity : p.policy.headBudget?.(l, h, budgets[l]) ?? budgets[l];
  const len = Array.from({ length: L }, () => new Array<number>(K).fill(0));
  const entries = () => len.reduce((a, row) => a + row.reduce((x, y) => x + y, 0), 0);
  const sequence = p.prefixTokens + p.documentTokens;
  let peak = 0;
  let chunks = 0;
  for (let at = 0; at < sequence; at += p.chunk) {
    const c = Math.min(p.chunk, sequence - at);
    const S = c + p.patchTokens;
    peak = Math.max(peak, (entries() + S * L * K) * entryBytes);
    for (let l = 0; l < L; l++) for (let h = 0; h < K; h++) len[l][h] = Math.min(headBudget(l, h), len[l][h] + c);
    chunks++;
  }
  const prefillPeak = peak;
  const afterRead = entries() * entryBytes;
  // decode: the suffix is appended, then every generated token but the last is fed back
  const grow = (n: number) => {
    for (let l = 0; l < L; l++) for (let h = 0; h < K; h++) len[l][h] += n;
  };
  for (let i = 0; i < p.suffixTokens; i++) {
    grow(1);
    peak = Math.max(peak, entries() * entryBytes);
  }
  for (let i = 0; i + 1 < p.maxTokens; i++) {
    grow(1);
    if (p.decodeBudget !== undefined && !p.policy.keepsAll) {
      for (let l = 0; l < L; l++) {
        for (let h = 0; h < K; h++) len[l][h] = Math.min(len[l][h], Math.max(p.decodeBudget, 0));
      }
    }
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
