import assert from "node:assert/strict";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { TomeError } from "../core/errors.ts";
import { rss } from "../core/meter/rss.ts";
import { loadTokenizer, type Tokenizer } from "../core/tokens/tokenizer.ts";
import { askFraming } from "../recipes/ask.ts";
import { renderBounded, TEMPLATE_LIMITS } from "../recipes/chat_template.ts";
import { buildPrompt } from "../recipes/prompt.ts";
import { hasShared, SMOLLM2_TOKENIZER } from "./helpers.ts";

/** A tokenizer whose only use here is its config: the template fails before any encoding. */
function withTemplate(chat_template: string, dir = "/models/hostile"): Tokenizer {
  const fail = () => {
    throw new Error("the template was expected to fail before tokenization");
  };
  return {
    encode: fail,
    encodePrompt: fail,
    decode: fail,
    idToToken: fail,
    tokenToId: fail,
    vocabSize: 0,
    config: { chat_template },
    dir,
  };
}

/** What `fn` throws (the test fails when it returns). */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  assert.fail("expected an error");
}

const nest = (depth: number, body: string) => "{% for a in l %}".repeat(depth) + body + "{% endfor %}".repeat(depth);
const TEN = "{% set l = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] %}";
const X10 = "{% set s = 'xxxxxxxxxx' %}";

const HOSTILE: [string, string][] = [
  ["writes 100M characters", "{% for i in range(100000000) %}x{% endfor %}"],
  ["range(1e10)", "{% for i in range(1e10) %}{% endfor %}{{ range(10000000000)|length }}"],
  ["writes 1.3e9 characters from nested loops over a small list", TEN + nest(9, "xxxxxxxxxxxxx")],
  ["loops 1e10 times writing nothing", TEN + nest(10, "")],
  [
    "nested loops over long ranges with empty bodies",
    "{% for i in range(20000) %}{% for j in range(20000) %}{% endfor %}{% endfor %}",
  ],
  [
    "doubles a string 40 times",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
  ],
  ["indent of a huge width", "{{ 'a\\nb\\nc'|indent(400000000) }}"],
  ["replace filter, 10× per step", X10 + "{{ s" + "|replace('x', s)".repeat(9) + " }}"],
  ["replace method, 10× per step", X10 + "{{ s" + ".replace('x', s)".repeat(9) + " }}"],
  [
    "join with a long separator",
    X10 + "{% set b = s|replace('x', s)|replace('x', s)|replace('x', s) %}{{ range(99999)|join(b) }}",
  ],
  [
    "a list grown item by item",
    "{% set ns = namespace(l=[]) %}" +
    "{% for i in range(20000) %}{% for j in range(20000) %}{% set ns.l = ns.l + [j] %}{% endfor %}{% endfor %}",
  ],
  ["endless recursion", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"],
  ["a template of 2M characters", "x".repeat(2_000_000)],
];

const hostile = (name: string) => HOSTILE.find(([n]) => n === name)![1];

Deno.test("hostile chat templates fail fast, as an invalid model, without allocating", async (t) => {
  const peakBefore = rss().peak;
  for (const [name, template] of HOSTILE) {
    await t.step(name, () => {
      const started = performance.now();
      const err = thrown(() => buildPrompt(withTemplate(template), askFraming("Why?")));
      const ms = performance.now() - started;
      assert.ok(err instanceof TomeError, `not a TomeError: ${err}`);
      assert.equal(err.kind, "modelInvalid");
      assert.equal(err.code, 10);
      assert.match(err.message, /^\/models\/hostile\/tokenizer_config\.json: chat template /);
      assert.ok(ms < TEMPLATE_LIMITS.ms + 3_000, `took ${ms.toFixed(0)} ms`);
    });
  }
  const grew = rss().peak - peakBefore;
  // each value is bounded (1e6 characters, 20,000 items), not the garbage V8 holds between collections over 13
  // templates; unbounded, `range(1e10)` alone took 2.1 GB and 100M characters did not finish
  assert.ok(grew < 400e6, `peak RSS grew by ${(grew / 1e6).toFixed(0)} MB`);
});

Deno.test("the limits name the cause", () => {
  const cause = (template: string) => {
    try {
      buildPrompt(withTemplate(template), askFraming("Why?"));
    } catch (err) {
      return (err as Error).message.replace(/^.*: chat template /, "");
    }
    return "rendered";
  };
  assert.match(cause(hostile("writes 100M characters")), /^builds a range of 100000000 items/);
  assert.match(cause(TEN + nest(10, "")), /^did not finish rendering within 1000 ms/);
  assert.match(cause(hostile("doubles a string 40 times")), /^writes more than 1000000 characters/);
  assert.match(cause(hostile("endless recursion")), /^failed to render: /);
  // one step from a string within the limit (1e6 characters) to 1e12: refused before it is built
  const million = X10 + "{% set m = s" + "|replace('x', s)".repeat(5) + " %}";
  assert.equal(renderBounded(million + "{{ m|length }}", {}), "1000000");
  assert.match(cause(million + "{{ m|replace('x', m) }}"), /^writes more than 1000000 characters/);
  assert.match(cause(million + "{{ m.replace('x', m) }}"), /^writes more than 1000000 characters/);
  assert.match(cause(million + "{{ [m, m]|join(m) }}"), /^writes more than 1000000 characters/);
  assert.match(cause("{{ raise_exception('no system role') }}"), /^failed to render: no system role/);
  assert.match(cause("{% for m in messages %}{% endfor %}"), /^does not place the user message once/);
});

/** Templates that use the constructs the bounds look at, within reason; each must render as the library renders it. */
const NORMAL: string[] = [
  "{% for m in messages %}{{ m.role|upper }}: {{ m.content|indent(2) }}\n{% endfor %}",
  "{{ messages|map(attribute='role')|join(', ') }}|{% for m in messages %}{{ m.content|replace('\\n', ' ')|trim }}{% endfor %}",
  "{% for m in messages %}{{ m.content.replace('a', 'A') }}{{ loop.index }}/{{ loop.length }}{% endfor %}",
  "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}{{ range(10, 0, -3)|join(',') }}",
  "{{ bos_token }}{% for m in messages %}{{ m|tojson }}{% endfor %}{% if add_generation_prompt %}<gen>{% endif %}",
  "{% macro turn(m) %}[{{ m.role }}]{{ m.content }}{% endmacro %}{% for m in messages %}{{ turn(m) }}{% endfor %}",
  "Today: {{ strftime_now('%d %b %Y') }}. {% for m in messages %}{{ m.content }}{% endfor %}",
];

Deno.test("normal templates render exactly as the library renders them", () => {
  const vars = {
    messages: [
      { role: "system", content: "Be brief." },
      { role: "user", content: "a line\nand another, with a tab\t" },
    ],
    add_generation_prompt: true,
    bos_token: "<s>",
    eos_token: "</s>",
  };
  for (const template of NORMAL) {
    assert.equal(renderBounded(template, vars), new Template(template).render(vars), template);
  }
});

Deno.test({
  name: "the SmolLM2 chat template renders as the library renders it, and frames the document",
  ignore: !hasShared,
  async fn() {
    const tok = await loadTokenizer(SMOLLM2_TOKENIZER);
    const template = tok.config.chat_template as string;
    for (const system of [undefined, "You answer from the document."]) {
      for (const add_generation_prompt of [true, false]) {
        const vars = {
          messages: [...(system ? [{ role: "system", content: system }] : []), { role: "user", content: "Q?" }],
          add_generation_prompt,
        };
        assert.equal(renderBounded(template, vars), new Template(template).render(vars));
      }
    }
    const p = buildPrompt(tok, askFraming("Why did the job fail?"));
    assert.match(
      tok.decode(p.prefix) + "{document}" + tok.decode(p.suffix),
      /^(<\|im_start\|>system\n[\s\S]*)?<\|im_start\|>user\n[\s\S]*\{document\}[\s\S]*<\|im_start\|>assistant\n$/,
    );
  },
});

Deno.test("a template longer than the limit is refused before parsing, with the config's path", () => {
  const err = thrown(() => buildPrompt(withTemplate("x".repeat(2_000_000), join("m", "d")), askFraming("?")));
  assert.equal(
    (err as Error).message,
    `${join("m", "d", "tokenizer_config.json")}: chat template is 2000000 characters long (at most 1000000)`,
  );
});
