/**
 * Perplexity under eviction: the negative log-likelihood of a text's last N
 * tokens given its prefix read through a policy (compressed) vs. the full
 * prefix. The prefix is read as tome reads documents (chunked, evicting); the
 * last N tokens are then teacher-forced without eviction.
 */
import { type LoadedModel, loadModel, read } from "../mod.ts";
import { logProb, teacherForce } from "../engine/score.ts";
import { makePolicy, type PolicyOptions } from "../policies/mod.ts";

export interface PplOptions {
  model: string;
  text: string;
  policies: string[];
  budgets: number[];
  /** Tokens scored at the end of the text. */
  last: number;
  chunk: number;
  kvDtype: "float32" | "float16";
  positions: "original" | "compact" | "auto";
  executionProviders?: string[];
  threads?: number;
  policyOptions?: PolicyOptions;
}

export interface PplRow {
  policy: string;
  budget: number | null;
  prefix_tokens: number;
  scored_tokens: number;
  nll: number;
  ppl: number;
  footprint: number;
  peak_fraction: number;
  kv_peak_bytes: number;
  seconds: number;
}

export async function* runPpl(o: PplOptions): AsyncGenerator<PplRow> {
  const probe = await loadModel(o.model, {
    kvDtype: o.kvDtype,
    executionProviders: o.executionProviders,
    threads: o.threads,
  });
  const ids = probe.tokenizer.encode(o.text);
  await probe.session.close();
  if (ids.length < o.last + 2) throw new Error(`the text has ${ids.length} tokens; --last ${o.last} needs more`);
  const positions = o.positions !== "auto"
    ? o.positions
    : ids.length + 8 <= probe.config.maxPositions
    ? "original"
    : "compact";
  const load = (allLogits: boolean) =>
    loadModel(o.model, {
      positions,
      kvDtype: o.kvDtype,
      allLogits,
      executionProviders: o.executionProviders,
      threads: o.threads,
    });
  const model: LoadedModel = await load(false);
  const scorer: LoadedModel = await load(true);
  try {
    // the prefix's last token is held back: its logits predict the first scored token
    const cut = ids.length - o.last - 1;
    const prefix = ids.slice(0, cut);
    const scored = ids.slice(cut);
    for (const name of o.policies) {
      const policy = await makePolicy(name, model.config, o.policyOptions);
      for (const budget of policy.keepsAll ? [null] : o.budgets) {
        const t0 = performance.now();
        const state = await read({ ids: prefix }, {
          model,
          policy,
          budget: budget ?? 1,
          chunk: o.chunk,
          questionPatch: false,
        });
        const s = state.meter.summary();
        let nll = 0;
        await teacherForce(state.prefill, scorer.session, scored, o.chunk, (row, i) => {
          if (i + 1 < scored.length) nll -= logProb(row, scored[i + 1]);
        });
        const mean = nll / o.last;
        yield {
          policy: name,
          budget,
          prefix_tokens: prefix.length,
          scored_tokens: o.last,
          nll: mean,
          ppl: Math.exp(mean),
          footprint: s.footprint,
          peak_fraction: s.peakFraction,
          kv_peak_bytes: s.kvPeakBytes,
          seconds: (performance.now() - t0) / 1000,
        };
      }
    }
  } finally {
    await model.session.close();
    await scorer.session.close();
  }
}
