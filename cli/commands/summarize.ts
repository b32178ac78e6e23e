import { type Command, Option } from "commander";
import { summarizeDefaults, summarizeFraming, SUMMARY_STYLES, type SummaryStyle } from "../../recipes/summarize.ts";
import { addRunOptions, intFlag, type RunFlags } from "../options.ts";
import { runRecipe } from "../run.ts";

/** `tome summarize PATH|-`: a summary of a document of any length. */
export function summarizeCommand(program: Command): void {
  addRunOptions(
    program.command("summarize")
      .description("summarize a file, a directory, or stdin, in a fixed KV budget")
      .argument("<input>", "a file, a directory, or - for stdin")
      .addOption(new Option("--style <style>", "how to summarize").choices(SUMMARY_STYLES).default("brief"))
      .option("--words <n>", "about how many words"),
  )
    .addHelpText(
      "after",
      `
Examples:
  tome summarize war_and_peace.txt --style bullets --words 150 -m ~/models/SmolLM2-360M-Instruct
  journalctl -b | tome summarize - --style brief`,
    )
    .action(async (input: string, flags: RunFlags & { style: SummaryStyle; words?: string }) => {
      const words = intFlag(flags.words, "--words");
      const recipe = {
        name: "summarize",
        framing: summarizeFraming(flags.style, words, flags.system),
        ...summarizeDefaults(words),
      };
      await runRecipe(input, recipe, flags);
    });
}
