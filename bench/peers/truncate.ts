/**
 * How local-model apps fit a prompt longer than their context into it, on the
 * token list, before llama.cpp sees it (bench/peers/peers.ts, "what users get
 * today").
 */

/** Ollama's default `num_keep` (api.DefaultOptions: the first 4 tokens survive truncation and shifting). */
export const OLLAMA_NUM_KEEP = 4;

/**
 * Ollama's runner (runner/ollamarunner NewSequence, `truncate` on by default):
 * a prompt of more than `numCtx` tokens keeps its first `numKeep` tokens
 * (clamped to `numCtx - 1`) and its last `numCtx - numKeep` tokens; the front
 * of the rest is dropped. The result is exactly `numCtx` tokens, so the first
 * generated token fills the cache and Ollama then shifts (`shift` on by
 * default; see llama_run.mjs).
 */
export function ollamaTruncate(ids: readonly number[], numCtx: number, numKeep = OLLAMA_NUM_KEEP): number[] {
  if (ids.length <= numCtx) return [...ids];
  const keep = Math.min(numKeep, numCtx - 1);
  const discard = ids.length - numCtx;
  return [...ids.slice(0, keep), ...ids.slice(keep + discard)];
}

/**
 * LM Studio's `truncateMiddle` context-overflow policy, as this harness
 * restates it for one long message (LM Studio's engine is closed; its
 * documentation says the beginning and the end are kept and the middle
 * removed): room is left for `reserve` answer tokens, the first half of the
 * rest comes from the prompt's head and the second half (rounded up) from its
 * tail, so the question at the end always survives.
 */
export function truncateMiddle(ids: readonly number[], numCtx: number, reserve: number): number[] {
  const room = numCtx - reserve;
  if (room < 2) throw new Error(`a context of ${numCtx} leaves no room after ${reserve} answer tokens`);
  if (ids.length <= room) return [...ids];
  const head = Math.floor(room / 2);
  return [...ids.slice(0, head), ...ids.slice(ids.length - (room - head))];
}
