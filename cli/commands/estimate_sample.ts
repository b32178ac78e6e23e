/**
 * A short real run with a run's settings, to predict a whole run's speed and
 * memory: memory is flat once the budget is full, so the sample's RSS
 * predicts the run's, and its steady chunk time predicts prefill speed.
 */
import { generate, type LoadedModel, read, type ResolvedRun } from "../../core/mod.ts";
import { rss } from "../../core/meter/rss.ts";

export interface SampleMeasure {
  /** Document tokens per second past the first chunk (warm-up). */
  prefillTokensPerSecond: number;
  /** Generated tokens per second past the first. */
  decodeTokensPerSecond: number;
  /** The process's peak RSS after the sample. */
  peakRssBytes: number;
  sampleTokens: number;
}

/** Tokens a sample needs: the budget filled, and two chunks over it. */
export function sampleTokens(run: ResolvedRun): number {
  return run.budget + 2 * run.chunk;
}

/** Reads `ids` (the input's first tokens) and generates `decodeSteps + 1` tokens with the run's settings. */
export async function measureSample(
  model: LoadedModel,
  run: ResolvedRun,
  ids: number[],
  prompt: { prefix: number[]; suffix: number[] },
  decodeSteps = 4,
): Promise<SampleMeasure> {
  const chunkTimes: number[] = [];
  const state = await read({ ids }, {
    model,
    run,
    prefix: prompt.prefix,
    question: prompt.suffix,
    onEvent: (e) => e.type === "chunk" && chunkTimes.push(e.seconds),
  });
  const t = performance.now();
  let decoded = 0;
  const answer = generate(state, {
    suffix: prompt.suffix,
    maxTokens: decodeSteps + 1,
    eos: [],
    sampling: { temperature: 0 },
  });
  for await (const _ of answer) decoded = state.meter.summary().generatedTokens;
  const steady = chunkTimes.length > 1 ? (chunkTimes.at(-1)! - chunkTimes[0]) / (chunkTimes.length - 1) : chunkTimes[0];
  return {
    prefillTokensPerSecond: run.chunk / Math.max(1e-6, steady),
    decodeTokensPerSecond: Math.max(1, decoded - 1) / Math.max(1e-6, (performance.now() - t) / 1000),
    peakRssBytes: rss().peak,
    sampleTokens: ids.length,
  };
}
