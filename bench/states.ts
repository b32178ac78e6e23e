/**
 * Compress once, ask many (saved states):
 *   --part recall  the retrieval model, N needles in one haystack, every needle asked from one saved state per
 *                  (policy, budget): snapkv shaped by all questions, snapkv without a question, kvzip, streaming;
 *                  recall per policy and the prefill time against snapkv without a question
 *   --part time    the 360M shape: answering from a saved state vs reading the input again
 *
 *   deno run -A --v8-flags=--optimize-for-size bench/states.ts --part all [--tokens 32768] [--needles 8]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { fork, generate, loadModel, loadState, read, type ReadState, saveState } from "../core/mod.ts";
import { haystack, needle, scoreAnswer } from "../core/eval/haystack.ts";
import { loadCorpus } from "../core/input/corpus.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { makeRetrievalModel } from "../core/model/retrieval.ts";
import { askFraming } from "../recipes/ask.ts";
import { buildPrompt } from "../recipes/prompt.ts";
import { report, type Row } from "./report.ts";

const { values: args } = parseArgs({
  options: {
    part: { type: "string", default: "all" },
    tokens: { type: "string", default: "32768" },
    needles: { type: "string", default: "8" },
    budgets: { type: "string", default: "1024,256" },
    "time-tokens": { type: "string", default: "32768" },
  },
});
const parts = args.part === "all" ? ["recall", "time"] : args.part!.split(",");
const root = join(import.meta.dirname!, "results", "states");
await Deno.mkdir(root, { recursive: true });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const shared = join(import.meta.dirname!, "..", "..", "shared", "fixtures", "smollm2-tokenizer");
const hasShared = await Deno.stat(join(shared, "tokenizer.json")).then(() => true, () => false);

/** Greedy answer text. */
async function answer(state: ReadState, suffix: number[], maxTokens: number): Promise<string> {
  let text = "";
  for await (const piece of generate(state, { suffix, maxTokens, sampling: { temperature: 0 }, eos: [] })) {
    text += piece;
  }
  return text;
}

if (parts.includes("recall")) {
  const dir = join(root, "retrieval");
  if (!(await Deno.stat(join(dir, "config.json")).then(() => true, () => false))) {
    await makeRetrievalModel(dir, { tokenizer: hasShared ? shared : undefined });
  }
  const model = await loadModel(dir, { kvDtype: "float16", positions: "compact" });
  const corpus = await loadCorpus();
  const N = Number(args.needles), T = Number(args.tokens);
  // one haystack, N needles at evenly spaced depths: the first from haystack(), the others put in at sentence ends
  const base = haystack(corpus.text, model.tokenizer, T, 0, 7);
  const names = [
    "Natasha",
    "Pierre",
    "Andrei",
    "Nikolai",
    "Sonya",
    "Helene",
    "Dolokhov",
    "Denisov",
    "Marya",
    "Anatole",
  ];
  const needles = Array.from({ length: N }, (_, i) => needle(names[i % names.length], String(10000 + 7919 * (i + 3))));
  let text = base.text.replace(base.needle.fact, "");
  needles.forEach((n, i) => {
    const at = Math.floor((text.length * (i + 0.5)) / N);
    const cut = text.indexOf(". ", at);
    text = text.slice(0, cut + 2) + n.fact + " " + text.slice(cut + 2);
  });
  const prompts = needles.map((n) => buildPrompt(model.tokenizer, askFraming(n.prefix), model.config.bosTokenId));
  const patch = prompts.flatMap((p) => p.suffix);
  const rows: Row[] = [];
  let plainSeconds = 0;
  const runs = [
    { label: "snapkv, no question", policy: "snapkv", questionPatch: false },
    { label: "snapkv, all questions", policy: "snapkv", questionPatch: true },
    { label: "kvzip", policy: "kvzip", questionPatch: false },
    { label: "streaming", policy: "streaming", questionPatch: false },
  ];
  for (const budget of args.budgets!.split(",").map(Number)) {
    for (const r of runs) {
      const t0 = performance.now();
      const state = await read(text, {
        model,
        policy: r.policy,
        budget,
        prefix: prompts[0].prefix,
        question: r.questionPatch ? patch : [],
        questionPatch: r.questionPatch,
      });
      const seconds = (performance.now() - t0) / 1000;
      if (r.label === "snapkv, no question") plainSeconds = seconds;
      const file = join(root, `retrieval-${r.policy}-${budget}.tstate`);
      await saveState(file, model, state.sequence, {
        run: {
          policy: r.policy,
          budget,
          chunk: state.run.chunk,
          positions: "compact",
          kvDtype: "float16",
          window: state.run.window,
          questionPatch: r.questionPatch,
          decodeBudget: null,
        },
        recipe: "ask",
        questions: r.questionPatch ? needles.map((n) => n.prefix) : [],
        queryAgnostic: r.policy === "kvzip",
        prefix: prompts[0].prefix,
        input: { bytes: text.length, files: 1, sources: ["haystack"] },
      });
      const loaded = await loadState(file, model);
      const fromState = await read({ ids: [] }, { model, run: state.run, from: loaded.sequence });
      let hits = 0;
      for (let i = 0; i < N; i++) {
        const a = await answer(fork(fromState), prompts[i].suffix, 8);
        if (scoreAnswer(a, needles[i].code).exact) hits++;
      }
      const s = state.meter.summary();
      rows.push({
        policy: r.label,
        budget,
        tokens: s.documentTokens,
        recall: `${hits}/${N}`,
        kv_peak_mib: s.kvPeakBytes / 2 ** 20,
        state_mib: (await Deno.stat(file)).size / 2 ** 20,
        prefill_s: seconds,
        prefill_factor: plainSeconds ? seconds / plainSeconds : 1,
      });
      console.error(JSON.stringify(rows.at(-1)));
    }
  }
  await model.session.close();
  await report(
    "states-recall",
    `deno run -A bench/states.ts --part recall --tokens ${T} --needles ${N} --budgets ${args.budgets}`,
    rows,
  );
}

if (parts.includes("time")) {
  const dir = join(root, "random-360m");
  if (!(await Deno.stat(join(dir, "config.json")).then(() => true, () => false))) {
    await makeRandomModel(dir, { arch: "llama", shape: SIZES["360m"], seed: 0, dtype: "BF16", tokenizer: shared });
  }
  const model = await loadModel(dir, { kvDtype: "float16", positions: "compact" });
  const corpus = await loadCorpus();
  const ids = model.tokenizer.encode(corpus.text.slice(0, 8 * Number(args["time-tokens"]))).slice(
    0,
    Number(args["time-tokens"]),
  );
  const prompt = buildPrompt(model.tokenizer, askFraming("Who is Natasha?"), model.config.bosTokenId);
  const t0 = performance.now();
  const state = await read({ ids }, { model, policy: "snapkv", budget: 1024, prefix: prompt.prefix });
  const readSeconds = (performance.now() - t0) / 1000;
  const file = join(root, "360m.tstate");
  const t1 = performance.now();
  await saveState(file, model, state.sequence, {
    run: {
      policy: "snapkv",
      budget: 1024,
      chunk: state.run.chunk,
      positions: "compact",
      kvDtype: "float16",
      window: state.run.window,
      questionPatch: false,
      decodeBudget: null,
    },
    recipe: "ask",
    questions: [],
    queryAgnostic: false,
    prefix: prompt.prefix,
    input: { bytes: 0, files: 1, sources: ["war_and_peace.txt"] },
  });
  const saveSeconds = (performance.now() - t1) / 1000;
  const t2 = performance.now();
  const loaded = await loadState(file, model);
  const fromState = await read({ ids: [] }, { model, run: state.run, from: loaded.sequence });
  await answer(fromState, prompt.suffix, 16);
  const stateSeconds = (performance.now() - t2) / 1000;
  const t3 = performance.now();
  await answer(
    await read({ ids }, { model, policy: "snapkv", budget: 1024, prefix: prompt.prefix }),
    prompt.suffix,
    16,
  );
  const againSeconds = (performance.now() - t3) / 1000;
  await model.session.close();
  await report("states-time", `deno run -A bench/states.ts --part time --time-tokens ${args["time-tokens"]}`, [
    {
      model: "360m shape (random)",
      tokens: ids.length,
      read_s: readSeconds,
      save_s: saveSeconds,
      state_mib: (await Deno.stat(file)).size / 2 ** 20,
      answer_from_state_s: stateSeconds,
      read_again_and_answer_s: againSeconds,
      speedup: againSeconds / stateSeconds,
    },
  ]);
}
