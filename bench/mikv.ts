/**
 * MiKV against drop-only at equal KV bytes, needle in a haystack on the
 * retrieval model (`tome make-model retrieval`): a policy at budget B
 * drop-only, against the same policy with a high tier of B/2 entries and an
 * int4 or int2 low tier filling the other half of the bytes (the default low
 * budget). Prints one row per (policy, method): exact recall and KV peak bytes.
 *
 *   deno run -A bench/mikv.ts MODEL CORPUS [--length 4000] [--budget 128] [--needles 6] [--policies snapkv,h2o]
 *     [--on-top]   also the low tier on top of the whole high budget (more bytes)
 */
import { parseArgs } from "node:util";
import { generate, loadModel, read } from "../core/mod.ts";
import { haystack, scoreAnswer, trialSeed } from "../core/eval/haystack.ts";
import { needlePrompt } from "../recipes/needle.ts";

const { positionals, values } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    length: { type: "string", default: "4000" },
    budget: { type: "string", default: "128" },
    needles: { type: "string", default: "6" },
    policies: { type: "string", default: "snapkv,h2o,tova" },
    /** Also the low tier on top of the full high budget (more bytes: what the low tier adds by itself). */
    "on-top": { type: "boolean", default: false },
  },
});
const [modelDir, corpusPath] = positionals;
const corpus = await Deno.readTextFile(corpusPath);
const length = Number(values.length), B = Number(values.budget), needles = Number(values.needles);
const depths = [0.1, 0.5, 0.9];
for (const tier of ["int4", "int2"] as const) {
  const model = await loadModel(modelDir, { positions: "original", kvDtype: "float16", lowTier: tier });
  const methods: { name: string; budget: number; keepEvicted?: "int4" | "int2" }[] = tier === "int4"
    ? [{ name: "drop", budget: B }, { name: tier, budget: B / 2, keepEvicted: tier }]
    : [{ name: tier, budget: B / 2, keepEvicted: tier }];
  if (values["on-top"]) methods.push({ name: `${tier} on top`, budget: B, keepEvicted: tier });
  for (const policy of values.policies.split(",")) {
    for (const m of methods) {
      let exact = 0, trials = 0, peak = 0, footprint = 0;
      for (const depth of depths) {
        for (let trial = 0; trial < needles; trial++) {
          const h = haystack(corpus, model.tokenizer, length, depth, trialSeed(7, length, depth, trial));
          const prompt = needlePrompt(model, h);
          const state = await read(h.text, {
            model,
            policy,
            budget: m.budget,
            chunk: 256,
            prefix: prompt.prefix,
            question: prompt.suffix,
            ...(m.keepEvicted ? { keepEvicted: m.keepEvicted } : {}),
          });
          let answer = "";
          for await (
            const p of generate(state, { suffix: prompt.suffix, maxTokens: 8, sampling: { temperature: 0 } })
          ) {
            answer += p;
          }
          const s = state.meter.summary();
          exact += scoreAnswer(answer, h.needle.code).exact ? 1 : 0;
          trials++;
          peak = Math.max(peak, s.kvPeakBytes);
          footprint += s.footprint;
        }
      }
      console.log(
        `${policy}\t${m.name}\thigh ${m.budget}\trecall ${exact}/${trials}\tKV peak ${peak} B\tfootprint ${
          (footprint / trials).toFixed(3)
        }`,
      );
    }
  }
  await model.session.close();
}
