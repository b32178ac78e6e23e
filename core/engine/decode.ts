/**
 * Decode: after the document, the recipe suffix (question or instruction and
 * the chat template's tail) is prefilled without eviction, then tokens are
 * sampled one at a time and streamed as text.
 */
import { uniform } from "../../kernels/random.ts";
import { sample, type SamplingOptions } from "../../kernels/sample.ts";
import { Detokenizer } from "../tokens/detokenize.ts";
import type { Tokenizer } from "../tokens/tokenizer.ts";
import type { BudgetPlan } from "./plan.ts";
import type { Sequence } from "./sequence.ts";
import { TomeError } from "../errors.ts";

export interface DecodeOptions {
  /** Token ids prefilled after the document, before the answer (at least one). */
  suffix: number[];
  maxTokens: number;
  sampling: SamplingOptions;
  seed: number;
  /** Ids that end the answer. */
  eos: number[];
  /** Strings that end the answer (not emitted). */
  stop: string[];
  /** Called with each generated token id (EOS not included). */
  onToken?: (id: number) => void;
  /** Called with the logits each token is sampled from (the row is reused: copy it to keep it). */
  onLogits?: (logits: Float32Array) => void;
}

/** Why generation ended. */
export type FinishReason = "eos" | "stop" | "length";

/** Streams the answer as text; returns why it ended. */
export async function* decode(
  seq: Sequence,
  plan: BudgetPlan,
  tokenizer: Tokenizer,
  opts: DecodeOptions,
): AsyncGenerator<string, FinishReason> {
  if (opts.suffix.length === 0) throw new Error("decode needs at least one suffix token");
  const rule = plan.decode;
  if (rule && plan.decodeBudget! < opts.suffix.length) {
    throw new TomeError(
      "usage",
      `decode budget ${plan.decodeBudget} is smaller than the ${opts.suffix.length}-token suffix`,
    );
  }
  seq.reserve(opts.suffix.length + (rule ? 1 : opts.maxTokens));
  const random = uniform(opts.seed);
  const detok = new Detokenizer(tokenizer);
  const history: number[] = [];
  const stops = new StopFilter(opts.stop);

  /**
   * Runs tokens and keeps their K/V — appended, or (decode-time eviction, one generated token at a time)
   * scored with the token as the observation window and evicted to the decode budget; returns the last logits.
   */
  const feed = async (ids: number[], generated: boolean) => {
    const before = seq.meanEntries();
    const bytesBefore = seq.kvBytes();
    const r = rule && generated
      ? await seq.step(ids, rule, { window: 1, logits: true })
      : await seq.append(ids, { logits: true });
    // token i attends to what was held before and the i + 1 new entries (whole)
    for (let i = 0; i < ids.length; i++) {
      seq.meter.token(
        before + i + 1,
        seq.kvBytes(),
        generated,
        bytesBefore + (i + 1) * seq.meter.tokenBytes,
        seq.lowBytes(),
      );
    }
    return r.logits!;
  };

  let logits = await feed(opts.suffix, false);
  for (let n = 0; n < opts.maxTokens; n++) {
    opts.onLogits?.(logits);
    const id = sample(logits, opts.sampling, history, random);
    if (opts.eos.includes(id)) {
      const rest = stops.flush(detok.flush());
      if (rest) yield rest;
      return "eos";
    }
    history.push(id);
    opts.onToken?.(id);
    seq.meter.emitted(history.length);
    const { text, stopped } = stops.push(detok.push(id));
    if (text) yield text;
    if (stopped) return "stop";
    if (n + 1 === opts.maxTokens) break;
    logits = await feed([id], true);
  }
  const rest = stops.flush(detok.flush());
  if (rest) yield rest;
  return "length";
}

/** Holds back text that might be the start of a stop string; cuts at the first stop string. */
export class StopFilter {
  #held = "";
  constructor(readonly stops: string[]) {}

  push(text: string): { text: string; stopped: boolean } {
    this.#held += text;
    let cut = -1;
    for (const s of this.stops) {
      const at = s ? this.#held.indexOf(s) : -1;
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      const out = this.#held.slice(0, cut);
      this.#held = "";
      return { text: out, stopped: true };
    }
    let keep = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.#held.length); k > keep; k--) {
        if (this.#held.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    const out = this.#held.slice(0, this.#held.length - keep);
    this.#held = this.#held.slice(this.#held.length - keep);
    return { text: out, stopped: false };
  }

  /** Text still held at the end (no stop string completed). */
  flush(text = ""): string {
    const { text: out, stopped } = this.push(text);
    if (stopped) return out;
    const rest = this.#held;
    this.#held = "";
    return out + rest;
  }
}
