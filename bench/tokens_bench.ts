import { join } from "node:path";
import { IncrementalEncoder } from "../core/tokens/stream.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";

const shared = join(import.meta.dirname!, "..", "..", "shared");
const tok = await loadTokenizer(join(shared, "fixtures", "smollm2-tokenizer"));
const text = (await Deno.readTextFile(join(shared, "corpus", "tinyshakespeare.txt"))).slice(0, 256 * 1024);

Deno.bench("tokenize 256 KiB whole", { group: "tokenize", baseline: true }, () => {
  tok.encode(text);
});

Deno.bench("tokenize 256 KiB streamed in 4 KiB segments", { group: "tokenize" }, () => {
  const enc = new IncrementalEncoder(tok);
  for (let i = 0; i < text.length; i += 4096) enc.push(text.slice(i, i + 4096));
  enc.end();
});
