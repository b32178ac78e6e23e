/**
 * The cost of bounded chat-template rendering on the SmolLM2 template and on
 * buildPrompt, against @huggingface/jinja's own unbounded render.
 *
 *   deno bench -A bench/chat_template_bench.ts
 */
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { renderBounded } from "../recipes/chat_template.ts";

const tok = await loadTokenizer(join(import.meta.dirname!, "..", "..", "shared", "fixtures", "smollm2-tokenizer"));
const template = tok.config.chat_template as string;
const vars = {
  messages: [
    { role: "system", content: "You answer from the document." },
    { role: "user", content: "Read the document below.\n\n\u0000tome-document\u0000\n\nQuestion: why?" },
  ],
  add_generation_prompt: true,
  bos_token: "",
  eos_token: "<|im_end|>",
};

Deno.bench("SmolLM2 template: library render (unbounded)", { group: "render", baseline: true }, () => {
  new Template(template).render(vars);
});

Deno.bench("SmolLM2 template: renderBounded", { group: "render" }, () => {
  renderBounded(template, vars);
});
