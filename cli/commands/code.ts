import type { Command } from "commander";
import { CODE_DEFAULTS, codeFraming } from "../../recipes/code.ts";
import { addRunOptions, type RunFlags } from "../options.ts";
import { runRecipe } from "../run.ts";

/** `tome code DIR [QUESTION]`: analyze a source tree. */
export function codeCommand(program: Command): void {
  addRunOptions(
    program.command("code")
      .description("analyze a source tree: architecture, entry points and risks, or answer a question about it")
      .argument("<dir>", "a directory (or file) of code; .gitignore is honoured, binaries skipped")
      .argument("[question]", "a question about the code (default: an overview)"),
  )
    .addHelpText(
      "after",
      `
Examples:
  tome code ./src -m ~/models/Qwen2.5-Coder-1.5B-Instruct
  tome code . "where are HTTP requests retried?" --budget 2048`,
    )
    .action(async (dir: string, question: string | undefined, flags: RunFlags) => {
      await runRecipe(dir, {
        name: "code",
        framing: codeFraming(question, flags.system),
        ...CODE_DEFAULTS,
      }, flags);
    });
}
