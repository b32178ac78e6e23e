import type { Framing } from "./prompt.ts";

/** `tome ask`: answer a question from the document. */
export function askFraming(question: string, system?: string): Framing {
  return {
    system,
    header: "Read the document below, then answer the question that follows it.",
    request:
      `Question: ${question}\nAnswer from the document, briefly. If the document does not say, answer that it does not say.`,
  };
}

/** Generation defaults: short, deterministic answers. */
export const ASK_DEFAULTS = { maxTokens: 256, temperature: 0 };
