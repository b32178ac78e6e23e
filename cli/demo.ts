/**
 * `deno task demo`: the main job, end to end, on what this machine has.
 *
 * For now (Foundation): streams the largest text of `../shared/corpus` through
 * `tome tokens` with the SmolLM2 tokenizer of `../shared/fixtures`. When those
 * are missing it says exactly what is missing and exits 3.
 */
import { join } from "node:path";
import { main } from "./main.ts";

const shared = join(import.meta.dirname!, "..", "..", "shared");
const corpus = join(shared, "corpus", "war_and_peace.txt");
const tokenizer = join(shared, "fixtures", "smollm2-tokenizer");

const missing = [corpus, join(tokenizer, "tokenizer.json")].filter((p) => {
  try {
    Deno.statSync(p);
    return false;
  } catch {
    return true;
  }
});
if (missing.length > 0) {
  console.error(`tome demo: missing ${missing.join(" and ")}`);
  console.error("tome demo: the demo reads the shared corpus and tokenizer beside the checkout (../shared).");
  Deno.exit(3);
}
console.error(`tome demo: tome tokens ${corpus} --tokenizer ${tokenizer} --json`);
Deno.exit(await main(["tokens", corpus, "--tokenizer", tokenizer, "--json"]));
