import type { Framing } from "./prompt.ts";

/** `tome code`: a source tree, each file introduced by `==> path <==`. */
export function codeFraming(question: string | undefined, system?: string): Framing {
  return {
    system,
    header: "Below is a source tree. Each file starts with a line `==> path/to/file <==` followed by its contents.",
    request: question
      ? `Question about this code: ${question}\nAnswer from the code and name the files (by path) your answer rests on.`
      : "Give an overview of this codebase: its architecture (main components and how they connect), its entry points, and its risks (bugs, security, maintainability). Refer to files by their paths.",
  };
}

export const CODE_DEFAULTS = { maxTokens: 600, temperature: 0 };
