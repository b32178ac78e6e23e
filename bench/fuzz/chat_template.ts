/**
 * Mutation fuzzer of chat templates (`tokenizer_config.json` is untrusted
 * input): what `buildPrompt` does with them, judged from outside.
 *
 *   deno run -A bench/fuzz/chat_template.ts [--cases 10000] [--seed 1] [--timeout 5000] [--no-runaway]
 *
 * Starts from real templates (ChatML as SmolLM2 ships it, Llama 3, Mistral's,
 * Zephyr's), and inserts fragments (undefined names, `raise_exception`, syntax
 * breaks, the message twice or not at all, recursion, large but legal
 * output), deletes spans, and changes `bos_token`/`eos_token` and the type of
 * `chat_template`. With runaway mutations (the default) it also inserts
 * templates that loop for hours, build `range(1e10)` or write 100M characters:
 * those must be refused within the watchdog, not rendered.
 *
 * The checker does not render templates. It knows: an unmutated seed must be
 * accepted, and its text holds the framing verbatim; an accepted template's
 * text places the document exactly once, holds the user message (in any case)
 * exactly once — the document can only be in one place — and is at most
 * 1,000,000 characters (tome's documented limit); a config without a string
 * template gets the plain prompt. A rejection must be a `modelInvalid`
 * TomeError; any other error, or no answer in time, is a failure.
 */
import { fuzzMain, type FuzzTarget, type Outcome } from "./harness.ts";

const CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + " +
  "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const LLAMA3 = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + " +
  "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
const MISTRAL = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}" +
  "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'system' %}" +
  "{{ '<<SYS>>' + message['content'] + '<</SYS>>' }}{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";
const ZEPHYR = "{% for message in messages %}\n{% if message.role == 'user' %}\n{{ '<|user|>\\n' + message.content + " +
  "eos_token }}\n{% elif message.role == 'system' %}\n{{ '<|system|>\\n' + message.content + eos_token }}\n{% endif %}\n" +
  "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";
/** Real templates the mutations start from. */
export const SEEDS = [CHATML, LLAMA3, MISTRAL, ZEPHYR];

const FRAGMENTS = [
  "{{ undefined_name.attr }}",
  "{{ raise_exception('refused') }}",
  "{% if %}",
  "{% for %}",
  "{{ 1 / 0 }}",
  "{{ messages[0]['content'] }}",
  "{{ messages[-1].content }}",
  "{{ messages[7].content }}",
  "{% for m in messages %}{{ m.content }}{% endfor %}",
  "{{ bos_token * 3 }}",
  "{{ 'x' * 1000 }}",
  "{% for i in range(200) %}{{ i }}{% endfor %}",
  "{% set a = [1, 2] %}{{ a | join(',') }}",
  "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
  "{{ messages | length }}",
  "{{ '{' }}",
  "}}",
  "{%",
  "{# unclosed",
  "{{ messages[0]['content'] | upper }}",
  "{{ none.x }}",
];
const RUNAWAY = [
  "{% for i in range(10000000000) %}x{% endfor %}",
  "{{ 'x' * 100000000 }}",
  "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
  "{{ range(10000000000) | length }}",
  "{% set s = 'ab' %}{% for i in range(40) %}{% set s = s + s %}{% endfor %}{{ s | length }}",
];

const pick = <T>(next: () => number, xs: readonly T[]): T => xs[Math.floor(next() * xs.length)];

/** Makes the mutator; `runaway` adds the templates that never end on their own. */
export function makeMutator(runaway: boolean): (next: () => number, i: number) => Uint8Array {
  return (next) => {
    let template: unknown = pick(next, SEEDS);
    const config: Record<string, unknown> = { bos_token: "<s>", eos_token: "</s>", model_max_length: 2048 };
    const r = next();
    if (r < 0.1) {
      // unmutated
    } else if (r < 0.2) {
      config.bos_token = pick(next, [null, 7, { content: "<b>" }, { content: 3 }, [], ""]);
      config.eos_token = pick(next, [null, "</s>", { content: "<e>" }, true]);
    } else if (r < 0.28) {
      template = pick(next, [null, 42, [], [{ name: "default", template }], "", { template }]);
    } else {
      let t = template as string;
      for (let k = 0; k < 1 + Math.floor(next() * 2); k++) {
        const at = Math.floor(next() * (t.length + 1));
        const how = next();
        if (how < 0.2) t = t.slice(0, at) + t.slice(at + 1 + Math.floor(next() * 12));
        else if (how < 0.3) t = t.replaceAll(pick(next, ["message['content']", "message.content"]), "''");
        else if (runaway && how < 0.45) t = pick(next, RUNAWAY) + t; // where it parses
        else {
          // mostly where a tag ends (so the fragment parses and runs), else anywhere
          const ends = [0, t.length, ...[...t.matchAll(/[}%]\}/g)].map((m) => m.index! + 2)];
          const where = next() < 0.7 ? pick(next, ends) : at;
          t = t.slice(0, where) + pick(next, FRAGMENTS) + t.slice(where);
        }
      }
      template = t;
    }
    if (template !== undefined) config.chat_template = template;
    return new TextEncoder().encode(JSON.stringify(config));
  };
}

/** The largest prompt text tome accepts from a template (README: chat templates render to at most 1,000,000 characters). */
const MAX_CHARS = 1_000_000;

/** The checker: null when the outcome is right for this config, else what is wrong ("rejected-valid" for a refused seed). */
export function judge(input: Uint8Array, outcome: Outcome): string | null {
  const config = JSON.parse(new TextDecoder().decode(input));
  const t = config.chat_template;
  const chat = typeof t === "string" && t.length > 0;
  const seed = chat && SEEDS.includes(t) && config.bos_token === "<s>" && config.eos_token === "</s>";
  if (!outcome.accepted) return seed || !chat ? "rejected-valid" : null;
  const got = outcome.result as { text: string; ids: boolean };
  // a plain prompt (no template) ends asking for the answer; the seeds' chat turns never do
  const plain = /Answer:\s*$/.test(got.text);
  if (plain === chat) return `${plain ? "a plain" : "a chat"} prompt, the config says ${chat ? "chat" : "plain"}`;
  if (!got.ids) return "token ids out of range";
  if (got.text.length > MAX_CHARS) return `accepted a prompt of ${got.text.length} characters`;
  if (got.text.split("{document}").length !== 2) return "the document is not placed exactly once";
  // the user message holds the document: the rendering may hold it (and so the request) once, never twice
  const requests = got.text.toUpperCase().split("WHAT IS IT?").length - 1;
  if (requests !== 1) return `the user message appears ${requests} times`;
  if (seed && !/Read this\.\s*\{document\}\s*What is it\?/.test(got.text)) return "a seed lost the framing";
  return null;
}

/** The chat-template fuzz target; `runaway: false` leaves out templates that need rendering limits to end. */
export function chatTemplateTarget(runaway = true): FuzzTarget {
  return { name: "chat_template", kind: "modelInvalid", mutate: makeMutator(runaway), judge };
}

if (import.meta.main) {
  const s = await fuzzMain(chatTemplateTarget(!Deno.args.includes("--no-runaway")), Deno.args);
  if (s.failures > 0) Deno.exit(1);
}
