/**
 * The prompt around a needle haystack, for evaluation: chat models are asked
 * the needle's question, completion models continue its prefix.
 */
import type { Haystack } from "../core/eval/haystack.ts";
import type { LoadedModel } from "../core/mod.ts";
import { askFraming } from "./ask.ts";
import { buildPrompt, type Prompt } from "./prompt.ts";

/** A model with a chat template is a chat model. */
export const isChat = (model: LoadedModel) => typeof model.tokenizer.config.chat_template === "string";

/** Frames a haystack's needle as `tome ask` would. */
export function needlePrompt(model: LoadedModel, h: Haystack): Prompt {
  return buildPrompt(
    model.tokenizer,
    askFraming(isChat(model) ? h.needle.question : h.needle.prefix),
    model.config.bosTokenId,
  );
}
