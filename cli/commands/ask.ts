import type { Command } from "commander";
import { ASK_DEFAULTS, askFraming } from "../../recipes/ask.ts";
import { addRunOptions, type RunFlags } from "../options.ts";
import { runRecipe } from "../run.ts";

/** `tome ask QUESTION PATH|-`: answer a question from a document of any length. */
export function askCommand(program: Command): void {
  addRunOptions(
    program.command("ask")
      .description("answer a question from a file, a directory, or stdin, in a fixed KV budget")
      .argument("<question>", "what to ask")
      .argument("<input>", "a file, a directory, or - for stdin"),
  )
    .addHelpText(
      "after",
      `
Examples:
  tome ask "Who does Natasha marry?" war_and_peace.txt --model ~/models/SmolLM2-360M-Instruct
  cat big.log | tome ask "why did the job fail?" - --budget 64MiB --json`,
    )
    .action(async (question: string, input: string, flags: RunFlags) => {
      await runRecipe(
        input,
        { name: "ask", framing: askFraming(question, flags.system), ...ASK_DEFAULTS },
        flags,
      );
    });
}
