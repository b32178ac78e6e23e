/**
 * Fidelity: how far eviction moves the model's next-token distributions where
 * it matters — at the answer positions of needle-in-a-haystack prompts. The
 * question and the true answer are teacher-forced after the document, read
 * once with the full cache and once per policy and budget; the KL divergence
 * KL(full ‖ evicted) is averaged over the answer positions.
 */
import { read } from "../mod.ts";
import { klDivergence, teacherForce } from "../engine/score.ts";
import { makePolicy, type Policy, policyByName } from "../policies/mod.ts";
import { haystack, trialSeed } from "./haystack.ts";
import { type Budget, type EvalOptions, type NeedleFraming, openModel } from "./options.ts";

export interface FidelityOptions extends EvalOptions {
  /** The prompt around each haystack. */
  frame: NeedleFraming;
  lengths: number[];
  depths: number[];
  needles: number;
  corpus: string;
  seed: number;
}

export interface FidelityRow {
  policy: string;
  budget: Budget | null;
  length: number;
  depth: number;
  trial: number;
  /** Mean KL(full ‖ evicted) in nats over the answer positions. */
  kl: number;
  /** Whether the most likely token agrees with the full cache's at every answer position. */
  top1_agree: boolean;
  footprint: number;
  peak_fraction: number;
}

export async function* runFidelity(o: FidelityOptions): AsyncGenerator<FidelityRow> {
  // compact positions: with nothing evicted they equal the original ones, so the
  // full cache and every policy are compared under one graph at any length
  const model = await openModel(o, "compact");
  const scorer = await openModel(o, "compact", true);
  const policies = await Promise.all(o.policies.map((n) => makePolicy(n, model.config, o.policyOptions)));
  const argmax = (x: Float32Array) => x.reduce((b, v, i) => (v > x[b] ? i : b), 0);
  try {
    for (const length of o.lengths) {
      for (const depth of o.depths) {
        for (let trial = 0; trial < o.needles; trial++) {
          const h = haystack(o.corpus, model.tokenizer, length, depth, trialSeed(o.seed, length, depth, trial));
          const prompt = o.frame(model, h);
          const answer = model.tokenizer.encode(` ${h.needle.code}`);
          const forced = [...prompt.suffix, ...answer];
          const first = prompt.suffix.length - 1; // the row predicting the answer's first token
          const rows = async (policy: Policy, budget: Budget | null) => {
            const state = await read(h.text, {
              model,
              policy,
              budget: budget ?? 1,
              chunk: o.chunk,
              prefix: prompt.prefix,
              question: prompt.suffix,
            });
            const kept: Float32Array[] = [];
            await teacherForce(state.sequence, scorer.session, forced, o.chunk, (row, i) => {
              if (i >= first && i < forced.length - 1) kept.push(row.slice());
            });
            const s = state.meter.summary();
            return { kept, footprint: s.footprint, peakFraction: s.peakFraction };
          };
          const full = await rows(policyByName("full"), null);
          for (const policy of policies) {
            if (policy.keepsAll) continue;
            for (const budget of o.budgets) {
              const ev = await rows(policy, budget);
              const kls = ev.kept.map((q, i) => klDivergence(full.kept[i], q));
              yield {
                policy: policy.name,
                budget,
                length,
                depth,
                trial,
                kl: kls.reduce((a, b) => a + b, 0) / kls.length,
                top1_agree: ev.kept.every((q, i) => argmax(q) === argmax(full.kept[i])),
                footprint: ev.footprint,
                peak_fraction: ev.peakFraction,
              };
            }
          }
        }
      }
    }
  } finally {
    await model.session.close();
    await scorer.session.close();
  }
}
