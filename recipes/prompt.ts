/**
 * Prompt framing: the document sits inside the user turn of the model's chat
 * template (`tokenizer_config.json`, rendered with @huggingface/jinja within time and size limits), between
 * a header and the request. The tokens before the document are the prefix; the
 * request and the template's tail (up to the assistant's turn) are the suffix,
 * known before reading — so they ride along each chunk as the question patch.
 */
import { join } from "node:path";
import { TomeError } from "../core/errors.ts";
import type { Tokenizer } from "../core/tokens/tokenizer.ts";
import { renderBounded, TemplateLimitError } from "./chat_template.ts";

/** What a recipe asks. */
export interface Framing {
  /** System prompt (omitted when the template has no system role and none is given). */
  system?: string;
  /** Text before the document, inside the user turn. */
  header: string;
  /** The question or instruction, after the document. */
  request: string;
  /** For models without a chat template (completion models): what follows the document instead (default: request + "Answer:"). */
  plainRequest?: string;
}

/** Token ids around the document. */
export interface Prompt {
  prefix: number[];
  /** The request and the template's tail: prefilled after the document, and the observation window. */
  suffix: number[];
}

const DOCUMENT = "\u0000tome-document\u0000";

/** Renders the framing with the tokenizer's chat template (or a plain prompt) and tokenizes both sides of the document. */
export function buildPrompt(tokenizer: Tokenizer, framing: Framing, bosTokenId: number | null = null): Prompt {
  const template = tokenizer.config.chat_template;
  const content = `${framing.header}\n\n${DOCUMENT}\n\n${framing.request}`;
  let text: string;
  if (typeof template === "string" && template.length > 0) {
    const messages = [
      ...(framing.system ? [{ role: "system", content: framing.system }] : []),
      { role: "user", content },
    ];
    try {
      text = renderBounded(template, {
        messages,
        add_generation_prompt: true,
        bos_token: tokenText(tokenizer.config.bos_token),
        eos_token: tokenText(tokenizer.config.eos_token),
      });
    } catch (err) {
      const what = err instanceof TemplateLimitError ? err.message : `failed to render: ${(err as Error)?.message}`;
      throw new TomeError("modelInvalid", `${configPath(tokenizer)}: chat template ${what}`);
    }
  } else {
    const bos = bosTokenId !== null ? tokenizer.idToToken(bosTokenId) ?? "" : "";
    const request = framing.plainRequest ?? `${framing.request}\nAnswer:`;
    text = `${bos}${framing.system ? `${framing.system}\n\n` : ""}${framing.header}\n\n${DOCUMENT}\n\n${request}`;
  }
  const at = text.indexOf(DOCUMENT);
  if (at < 0 || text.indexOf(DOCUMENT, at + 1) >= 0) {
    throw new TomeError("modelInvalid", `${configPath(tokenizer)}: chat template does not place the user message once`);
  }
  return {
    prefix: tokenizer.encodePrompt(text.slice(0, at)),
    suffix: tokenizer.encodePrompt(text.slice(at + DOCUMENT.length)),
  };
}

const configPath = (tokenizer: Tokenizer) => join(tokenizer.dir, "tokenizer_config.json");

function tokenText(v: unknown): string {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return "";
}
