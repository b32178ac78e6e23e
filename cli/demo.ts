/**
 * `deno task demo`: the main job, end to end, on a fresh machine with nothing
 * but the project. It makes the retrieval model when it is not cached (with the
 * SmolLM2 tokenizer from ../shared when present, else a tokenizer learned from
 * the project's own text), builds a long haystack with one fact in it (from the
 * shared book, else the project's own text), and asks for the fact with
 * `tome ask` — live memory display, answer, report against the full cache.
 */
import { join } from "node:path";
import { cacheRoot } from "../core/model/cache.ts";
import { makeRetrievalModel } from "../core/model/retrieval.ts";
import { loadCorpus } from "../core/input/corpus.ts";
import { haystack } from "../core/eval/haystack.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { main } from "./main.ts";

const TOKENS = 100_000;
const DEPTH = 0.37;

const shared = join(import.meta.dirname!, "..", "..", "shared", "fixtures", "smollm2-tokenizer");
const hasShared = await Deno.stat(join(shared, "tokenizer.json")).then(() => true, () => false);
const model = join(cacheRoot(), "demo", hasShared ? "retrieval-smollm2" : "retrieval-trained");
const say = (s: string) => console.error(`tome demo: ${s}`);

if (!(await Deno.stat(join(model, "config.json")).then(() => true, () => false))) {
  say(
    `making the retrieval model in ${model} (${
      hasShared ? "SmolLM2 tokenizer" : "a tokenizer learned from the project's own text"
    })`,
  );
  const tmp = `${model}.tmp-${Deno.pid}`;
  await makeRetrievalModel(tmp, { tokenizer: hasShared ? shared : undefined });
  await Deno.rename(tmp, model);
}
const corpus = await loadCorpus();
const tok = await loadTokenizer(model);
const h = haystack(corpus.text, tok, TOKENS, DEPTH, 2026);
const file = join(cacheRoot(), "demo", "haystack.txt");
await Deno.writeTextFile(file, h.text);
say(
  `a haystack of ~${TOKENS / 1000}K tokens from ${corpus.source}, with one fact at ${
    Math.round(100 * h.placed)
  }% depth:`,
);
say(`  "${h.needle.fact}"`);
say(`tome ask "${h.needle.prefix}" ${file} --model ${model} --budget 1024`);
const args = ["ask", h.needle.prefix, file, "--model", model, "--budget", "1024", "--max-tokens", "6", ...Deno.args];
const code = await main(args);
if (code === 0) say(`expected ${h.needle.code}`);
Deno.exit(code);
