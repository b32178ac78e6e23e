import type { Framing } from "./prompt.ts";

/**
 * `tome ask`: answer a question from the document. For completion models (no
 * chat template), a question that is not a question ("The pass code of Natasha
 * is") ends the prompt as it is, for the model to continue.
 */
export function askFraming(question: string, system?: string): Framing {
  const isQuestion = /\?\s*$/.test(question);
  return {
    system,
    header: "Read the document below, then answer the question that follows it.",
    request:
      `Question: ${question}\nAnswer from the document, briefly. If the document does not say, answer that it does not say.`,
    plainRequest: isQuestion ? `Question: ${question}\nAnswer:` : question,
  };
}

/** Generation defaults: short, deterministic answers. */
export const ASK_DEFAULTS = { maxTokens: 256, temperature: 0 };
