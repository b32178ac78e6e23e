/** The tokenizer of a GGUF model (`--model FILE.gguf` or `ollama:NAME`), built from its metadata. */
import { type Tokenizer, tokenizerFromJson } from "../../tokens/tokenizer.ts";
import { ggufHeaderFor } from "./checkpoint.ts";
import { tokenizerFromGguf } from "./tokenizer.ts";

/** Loads the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata. */
export async function ggufTokenizer(spec: string): Promise<Tokenizer> {
  const h = await ggufHeaderFor(spec);
  const t = tokenizerFromGguf(h);
  return tokenizerFromJson(t.json, t.config, h.path);
}
