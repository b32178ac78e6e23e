/**
 * Needle in a haystack, the way tome is used: the question is known before
 * reading (the question patch rides along each chunk), the document is read
 * through chunked prefill with eviction, and the answer is decoded greedily.
 * The same harness runs on any model: completion models continue the needle's
 * prefix, chat models are asked the question.
 */
import { generate, type LoadedModel, read } from "../mod.ts";
import { choosePositions } from "../engine/resolve.ts";
import { makePolicy } from "../policies/mod.ts";
import { haystack, scoreAnswer, trialSeed } from "./haystack.ts";
import {
  type Budget,
  type EvalOptions,
  kvColumns,
  mergesFor,
  methodLabel,
  type NeedleFraming,
  openModel,
} from "./options.ts";

export interface NiahOptions extends EvalOptions {
  /** The prompt around each haystack. */
  frame: NeedleFraming;
  lengths: number[];
  depths: number[];
  /** Trials per (length, depth) cell, each a different slice, name and code. */
  needles: number;
  corpus: string;
  seed: number;
  positions: "original" | "compact" | "auto";
}

/** One trial. */
export interface NiahRow {
  policy: string;
  budget: Budget | null;
  length: number;
  tokens: number;
  depth: number;
  placed: number;
  trial: number;
  positions: "original" | "compact";
  code: string;
  answer: string;
  exact: boolean;
  partial: number;
  kv_peak_bytes: number;
  /** Each tier's own peak (they need not add up to `kv_peak_bytes`; the low one is 0 without `--keep-evicted`). */
  kv_high_peak_bytes: number;
  kv_low_peak_bytes: number;
  kv_full_bytes: number;
  footprint: number;
  /** The footprint in bytes-time (thin keys and low tiers weighed by their bytes). */
  footprint_bytes: number;
  peak_fraction: number;
  seconds: number;
}

/** Completion models get a few tokens, chat models room to say the number. */
const MAX_TOKENS = { completion: 8, chat: 24 };

const isChat = (model: LoadedModel) => typeof model.tokenizer.config.chat_template === "string";

/** Runs every (length, depth, trial) × (policy, budget) and yields each result as it completes. */
export async function* runNiah(o: NiahOptions): AsyncGenerator<NiahRow> {
  const models = new Map<string, LoadedModel>();
  const modelFor = async (positions: "original" | "compact") => {
    let m = models.get(positions);
    if (!m) {
      m = await openModel(o, positions);
      models.set(positions, m);
    }
    return m;
  };
  try {
    const probe = await modelFor(o.positions === "compact" ? "compact" : "original");
    const policies = await Promise.all(o.policies.map((n) => makePolicy(n, probe.config, o.policyOptions)));
    for (const length of o.lengths) {
      // the question and the answer follow the haystack
      const positions = choosePositions(o.positions, { tokens: length + 256 }, probe.config.maxPositions);
      const model = await modelFor(positions);
      for (const depth of o.depths) {
        for (let trial = 0; trial < o.needles; trial++) {
          const h = haystack(o.corpus, model.tokenizer, length, depth, trialSeed(o.seed, length, depth, trial));
          const prompt = o.frame(model, h);
          for (const policy of policies) {
            for (const merge of mergesFor(policy.keepsAll, o)) {
              for (const budget of policy.keepsAll ? [null] : o.budgets) {
                const t0 = performance.now();
                const state = await read(h.text, {
                  model,
                  policy,
                  budget: budget ?? 1,
                  chunk: o.chunk,
                  prefix: prompt.prefix,
                  question: prompt.suffix,
                  merge,
                  keyChannels: o.keyChannels,
                  keepEvicted: o.keepEvicted,
                  lowBudget: o.lowBudget,
                });
                let answer = "";
                const maxTokens = isChat(model) ? MAX_TOKENS.chat : MAX_TOKENS.completion;
                for await (
                  const piece of generate(state, { suffix: prompt.suffix, maxTokens, sampling: { temperature: 0 } })
                ) {
                  answer += piece;
                }
                const s = state.meter.summary();
                const score = scoreAnswer(answer, h.needle.code);
                yield {
                  policy: methodLabel(policy.name, merge, state.run, o),
                  budget,
                  length,
                  tokens: s.documentTokens,
                  depth,
                  placed: h.placed,
                  trial,
                  positions,
                  code: h.needle.code,
                  answer,
                  exact: score.exact,
                  partial: score.partial,
                  ...kvColumns(s),
                  kv_full_bytes: s.fullKvBytes,
                  seconds: (performance.now() - t0) / 1000,
                };
              }
            }
          }
        }
      }
    }
  } finally {
    for (const m of models.values()) await m.session.close();
  }
}
