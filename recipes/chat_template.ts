/**
 * Chat templates rendered with bounds. A checkpoint's `tokenizer_config.json`
 * is untrusted input, and @huggingface/jinja renders synchronously with no
 * limits: a template can loop for hours, build a `range()` of 1e10 numbers or
 * write gigabytes. Here the library's interpreter runs with a deadline checked
 * at every evaluated node, a size check on every value it produces (strings by
 * length, lists by items and the length of their strings), a `range()` that
 * refuses huge lists before building them, and bounds computed before the
 * filters and methods that multiply size in one step (`indent`, `join`,
 * `replace`).
 */
import { Environment, Interpreter, Template } from "@huggingface/jinja";

/** Limits of one rendering. */
export interface TemplateLimits {
  /** Wall-clock time for parsing and rendering, in milliseconds. */
  ms: number;
  /** Largest string (or list, counting its items' characters) any step may produce, the output included. */
  chars: number;
  /** Largest list any step may produce, `range()` included. */
  items: number;
  /** Largest template source, in characters. */
  sourceChars: number;
}

/** Far above any real chat template (they render in about a millisecond, to a few kilobytes). */
export const TEMPLATE_LIMITS: TemplateLimits = { ms: 1_000, chars: 1_000_000, items: 100_000, sourceChars: 1_000_000 };

/** A rendering stopped by a limit; `message` says which, as a phrase after "chat template". */
export class TemplateLimitError extends Error {}

/**
 * Renders `source` with `vars` within `limits`; throws {@link TemplateLimitError}
 * when a limit is hit, and the library's own error when the template is invalid.
 *
 * @example
 * renderBounded("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", { messages: [{ role: "user", content: "hi" }] });
 * // "<user>hi"
 */
export function renderBounded(
  source: string,
  vars: Record<string, unknown>,
  limits: TemplateLimits = TEMPLATE_LIMITS,
): string {
  if (source.length > limits.sourceChars) {
    throw new TemplateLimitError(`is ${source.length} characters long (at most ${limits.sourceChars})`);
  }
  const deadline = performance.now() + limits.ms;
  const parsed = new Template(source).parsed;
  const env = new Environment();
  for (const [k, v] of Object.entries(globals(limits))) env.set(k, v);
  for (const [k, v] of Object.entries(vars)) env.set(k, v);
  const out = new BoundedInterpreter(env, limits, deadline).run(parsed);
  return String(out.value);
}

// deno-lint-ignore no-explicit-any
type Node = any;
// deno-lint-ignore no-explicit-any
type Value = any;

class BoundedInterpreter extends Interpreter {
  constructor(env: Environment, readonly limits: TemplateLimits, readonly deadline: number) {
    super(env);
  }

  override evaluate(node: Node, environment: Environment): Value {
    // every node: one loop step over a bounded list is the longest stretch between two checks
    if (performance.now() > this.deadline) {
      throw new TemplateLimitError(`did not finish rendering within ${this.limits.ms} ms`);
    }
    if (node?.type === "FilterExpression") this.#checkFilter(node, environment);
    else if (node?.type === "CallExpression") this.#checkCall(node, environment);
    const value = super.evaluate(node, environment);
    this.#checkSize(value);
    return value;
  }

  #checkSize(value: Value, extra = 0): void {
    const size = sizeOf(value) + extra;
    if (size > this.limits.chars) {
      throw new TemplateLimitError(`writes more than ${this.limits.chars} characters`);
    }
    if (value?.type === "ArrayValue" && value.value.length > this.limits.items) {
      throw new TemplateLimitError(`builds a list of more than ${this.limits.items} items`);
    }
  }

  /** The largest output of `indent`, `join` and `replace`, checked before the library builds it. */
  #checkFilter(node: Node, env: Environment): void {
    const f = node.filter;
    const name = f.type === "Identifier" ? f.value : f.type === "CallExpression" ? f.callee?.value : undefined;
    if (name !== "indent" && name !== "join" && name !== "replace") return;
    const operand = this.evaluate(node.operand, env);
    const [args, kw] = this.#args(f.type === "CallExpression" ? f.args : [], env);
    if (name === "replace") return this.#checkReplace(operand, args, kw);
    if (name === "indent" && operand?.type === "StringValue") {
      const width = num(args[0] ?? kw.get("width")) ?? 4;
      const lines = operand.value.split("\n").length;
      return this.#checkGrowth(operand.value.length + lines * Math.max(0, width));
    }
    if (name === "join" && operand?.type === "ArrayValue") {
      const sep = args[0] ?? kw.get("d");
      const sepLen = sep?.type === "StringValue" ? sep.value.length : 0;
      return this.#checkGrowth(sizeOf(operand) + Math.max(0, operand.value.length - 1) * sepLen);
    }
  }

  /** `text.replace(old, new)`, checked like the filter. */
  #checkCall(node: Node, env: Environment): void {
    const callee = node.callee;
    if (callee?.type !== "MemberExpression" || callee.computed || callee.property?.value !== "replace") return;
    const object = this.evaluate(callee.object, env);
    if (object?.type !== "StringValue") return;
    const [args, kw] = this.#args(node.args, env);
    this.#checkReplace(object, args, kw);
  }

  #checkReplace(operand: Value, args: Value[], kw: Map<string, Value>): void {
    if (operand?.type !== "StringValue" || args[0]?.type !== "StringValue" || args[1]?.type !== "StringValue") return;
    const text: string = operand.value, old: string = args[0].value, rep: string = args[1].value;
    let n = old.length === 0 ? text.length + 1 : Math.floor(text.length / old.length);
    const count = num(args[2] ?? kw.get("count"));
    if (count !== undefined && count >= 0) n = Math.min(n, count);
    // each replaced occurrence grows the text by what the replacement adds over what it removes
    this.#checkGrowth(text.length + n * Math.max(0, rep.length - old.length));
  }

  #checkGrowth(chars: number): void {
    if (chars > this.limits.chars) throw new TemplateLimitError(`writes more than ${this.limits.chars} characters`);
  }

  /** Positional and keyword arguments, evaluated (the library evaluates them again: they are side-effect free). */
  #args(nodes: Node[], env: Environment): [Value[], Map<string, Value>] {
    const args: Value[] = [];
    const kw = new Map<string, Value>();
    for (const a of nodes ?? []) {
      if (a?.type === "KeywordArgumentExpression") kw.set(a.key.value, this.evaluate(a.value, env));
      else if (a?.type !== "SpreadExpression" && a?.type !== "KeywordSpreadExpression") {
        args.push(this.evaluate(a, env));
      }
    }
    return [args, kw];
  }
}

function num(v: Value): number | undefined {
  return v?.type === "IntegerValue" || v?.type === "FloatValue" ? v.value : undefined;
}

/** Characters of a string, or of a list's (or a mapping's) direct string items plus one per item. */
function sizeOf(v: Value): number {
  if (v?.type === "StringValue") return v.value.length;
  if (v?.type === "ArrayValue" || v?.type === "TupleValue") {
    let n = 0;
    for (const item of v.value) n += 1 + (item?.type === "StringValue" ? item.value.length : 0);
    return n;
  }
  if (v?.type === "ObjectValue" || v?.type === "NamespaceValue" || v?.type === "KeywordArgumentsValue") {
    let n = 0;
    for (const item of v.value.values()) n += 1 + (item?.type === "StringValue" ? item.value.length : 0);
    return n;
  }
  return 0;
}

/** The library's globals, with a bounded `range()`. */
function globals(limits: TemplateLimits): Record<string, unknown> {
  return {
    false: false,
    true: true,
    none: null,
    False: false,
    True: true,
    None: null,
    raise_exception: (msg: unknown) => {
      throw new Error(String(msg));
    },
    range: (start: number, stop?: number, step = 1) => {
      if (stop === undefined) [start, stop] = [0, start];
      if (step === 0) throw new Error("range() step must not be zero");
      const n = Math.max(0, Math.ceil((stop - start) / step));
      if (!(n <= limits.items)) throw new TemplateLimitError(`builds a range of ${n} items (at most ${limits.items})`);
      return Array.from({ length: n }, (_, i) => start + i * step);
    },
    strftime_now: (format: string) => strftime(new Date(), String(format)),
  };
}

/** The `strftime` subset chat templates use (%Y %m %d %b %B %H %M %%), as the library has it. */
function strftime(date: Date, format: string): string {
  const pad2 = (n: number) => String(n).padStart(2, "0");
  return format.replace(/%[YmdbBHM%]/g, (token) => {
    switch (token) {
      case "%Y":
        return String(date.getFullYear());
      case "%m":
        return pad2(date.getMonth() + 1);
      case "%d":
        return pad2(date.getDate());
      case "%b":
        return new Intl.DateTimeFormat(undefined, { month: "short" }).format(date);
      case "%B":
        return new Intl.DateTimeFormat(undefined, { month: "long" }).format(date);
      case "%H":
        return pad2(date.getHours());
      case "%M":
        return pad2(date.getMinutes());
      default:
        return "%";
    }
  });
}
