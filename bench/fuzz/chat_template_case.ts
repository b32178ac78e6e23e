/**
 * Worker side of the chat-template fuzzer: a case is a `tokenizer_config.json`
 * text. The test tokenizer's `tokenizer.json` is written once; each case is
 * loaded beside it as `tome` loads a tokenizer, and `buildPrompt` frames a
 * question around the document with it — whatever limits it applies.
 */
import { join } from "node:path";
import { loadTokenizer } from "../../core/tokens/tokenizer.ts";
import { buildPrompt } from "../../recipes/prompt.ts";
import { writeTestTokenizer } from "../../tests/model_fixtures.ts";

/** The framing every case renders (the checker looks for these strings). */
export const FRAMING = { system: "You answer from the document.", header: "Read this.", request: "What is it?" };

/** Writes the test tokenizer under `dir`. */
export async function setup(dir: string): Promise<void> {
  await writeTestTokenizer(join(dir, "tok"));
}

/** Loads the tokenizer with the case's config and builds the prompt; returns its tokens decoded around the document. */
export async function runCase(input: Uint8Array, dir: string): Promise<unknown> {
  const tok = join(dir, "tok");
  await Deno.writeFile(join(tok, "tokenizer_config.json"), input);
  const tokenizer = await loadTokenizer(tok);
  const p = buildPrompt(tokenizer, FRAMING, 1);
  // the prompt as the model sees it: both sides decoded, the document's place marked
  return {
    text: `${tokenizer.decode(p.prefix)}{document}${tokenizer.decode(p.suffix)}`,
    ids: [...p.prefix, ...p.suffix].every((id) => Number.isInteger(id) && id >= 0),
  };
}
