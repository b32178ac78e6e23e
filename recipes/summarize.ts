import type { Framing } from "./prompt.ts";

export type SummaryStyle = "brief" | "detailed" | "bullets";
export const SUMMARY_STYLES: SummaryStyle[] = ["brief", "detailed", "bullets"];

/** `tome summarize`: the instruction by style and length. */
export function summarizeFraming(style: SummaryStyle, words: number | undefined, system?: string): Framing {
  const length = words ? ` in about ${words} words` : "";
  const how: Record<SummaryStyle, string> = {
    brief: `Summarize the document above${length || " in one short paragraph"}.`,
    detailed:
      `Write a detailed summary of the document above${length}: its main parts in order, the key facts, people and conclusions.`,
    bullets: `Summarize the document above as a list of bullet points${length}, one key point per bullet.`,
  };
  return { system, header: "Here is a document.", request: how[style] };
}

/** Generation defaults; `--words` raises the token limit to fit. */
export function summarizeDefaults(words?: number) {
  return { maxTokens: words ? Math.ceil(words * 1.6) + 32 : 400, temperature: 0 };
}
