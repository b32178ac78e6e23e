/**
 * Perplexity under eviction: the negative log-likelihood of a text's last N
 * tokens given its prefix read through a policy (compressed) vs. the full
 * prefix. The prefix is read as tome reads documents (chunked, evicting); the
 * last N tokens are then teacher-forced without eviction. Each row also gives
 * the mean KL(full ‖ compressed) of the next-token distributions over the N
 * positions: how far the method moves the distribution, the honest signal on
 * a model whose perplexity means nothing (random weights). The full cache's
 * rows are computed once per run for it (N × vocab floats held).
 */
import { type LoadedModel, read, type ReadOptions } from "../mod.ts";
import { klDivergence, logProb, teacherForce } from "../engine/score.ts";
import { makePolicy } from "../policies/mod.ts";
import { type Budget, type EvalOptions, kvColumns, mergesFor, methodLabel, openModel } from "./options.ts";
import { choosePositions } from "../engine/resolve.ts";

export interface PplOptions extends EvalOptions {
  text: string;
  /** Tokens scored at the end of the text. */
  last: number;
  positions: "original" | "compact" | "auto";
}

export interface PplRow {
  policy: string;
  budget: Budget | null;
  prefix_tokens: number;
  scored_tokens: number;
  nll: number;
  ppl: number;
  footprint: number;
  /** The footprint in bytes-time (thin keys and low tiers weighed by their bytes). */
  footprint_bytes: number;
  peak_fraction: number;
  kv_peak_bytes: number;
  /** Each tier's own peak (they need not add up to `kv_peak_bytes`; the low one is 0 without `--keep-evicted`). */
  kv_high_peak_bytes: number;
  kv_low_peak_bytes: number;
  /** Mean KL(full ‖ this row) over the scored positions, in nats (0 for the full cache). */
  kl: number;
  seconds: number;
}

export async function* runPpl(o: PplOptions): AsyncGenerator<PplRow> {
  const probe = await openModel(o, "original");
  const ids = probe.tokenizer.encode(o.text);
  await probe.session.close();
  if (ids.length < o.last + 2) throw new Error(`the text has ${ids.length} tokens; --last ${o.last} needs more`);
  const positions = choosePositions(o.positions, { tokens: ids.length }, probe.config.maxPositions);
  const model: LoadedModel = await openModel(o, positions);
  const scorer: LoadedModel = await openModel(o, positions, true);
  try {
    // the prefix's last token is held back: its logits predict the first scored token
    const cut = ids.length - o.last - 1;
    const prefix = ids.slice(0, cut);
    const scored = ids.slice(cut);
    /** Reads the prefix with `opts`, then teacher-forces the scored tokens; `onRow` sees each row but the last. */
    const score = async (opts: Omit<ReadOptions, "model" | "chunk">, onRow: (row: Float32Array, i: number) => void) => {
      const state = await read({ ids: prefix }, { model, chunk: o.chunk, ...opts });
      await teacherForce(state.sequence, scorer.session, scored, o.chunk, (row, i) => {
        if (i + 1 < scored.length) onRow(row, i);
      });
      return state;
    };
    // the full cache's distributions, the reference every row's KL is taken against (and the `full` row itself)
    const full: Float32Array[] = [];
    let fullNll = 0;
    const started = performance.now();
    const reference = await score({ policy: "full", questionPatch: false }, (row, i) => {
      full.push(row.slice());
      fullNll -= logProb(row, scored[i + 1]);
    });
    const fullSeconds = (performance.now() - started) / 1000;
    for (const name of o.policies) {
      const policy = await makePolicy(name, model.config, o.policyOptions);
      for (const merge of mergesFor(policy.keepsAll, o)) {
        for (const budget of policy.keepsAll ? [null] : o.budgets) {
          const t0 = performance.now();
          let nll = 0, kl = 0;
          // the full cache was read once already, as the reference
          const state = name === "full" ? reference : await score({
            policy,
            budget: budget ?? 1,
            questionPatch: false,
            merge,
            keyChannels: o.keyChannels,
            keepEvicted: o.keepEvicted,
            lowBudget: o.lowBudget,
          }, (row, i) => {
            nll -= logProb(row, scored[i + 1]);
            kl += klDivergence(full[i], row);
          });
          if (state === reference) nll = fullNll;
          const s = state.meter.summary();
          const mean = nll / o.last;
          yield {
            policy: methodLabel(name, merge, state.run, o),
            budget,
            prefix_tokens: prefix.length,
            scored_tokens: o.last,
            nll: mean,
            ppl: Math.exp(mean),
            ...kvColumns(s),
            kl: kl / o.last,
            seconds: state === reference ? fullSeconds : (performance.now() - t0) / 1000,
          };
        }
      }
    }
  } finally {
    await model.session.close();
    await scorer.session.close();
  }
}
