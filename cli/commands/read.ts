import type { Command } from "commander";
import { ASK_DEFAULTS, askFraming } from "../../recipes/ask.ts";
import { addRunOptions, collectOption, type RunFlags } from "../options.ts";
import { usage } from "../output.ts";
import { runRead } from "../run.ts";

interface ReadFlags extends RunFlags {
  question?: string[];
  queryAgnostic?: boolean;
}

/** `tome read INPUT --save FILE`: compress once, ask many — the reading state, saved for `tome ask --state`. */
export function readCommand(program: Command): void {
  addRunOptions(
    program.command("read")
      .description("read a document once into a compressed state saved to a file, for `tome ask --state`")
      .argument("[input]", "a file, a directory, or - for stdin (with --state: more input to read after it)")
      .option("-q, --question <text>", "shape the read for this question (repeat for several)", collectOption)
      .option(
        "--query-agnostic",
        "score with KVzip's reconstruction, so the state serves any question (--policy kvzip)",
      ),
  )
    .addHelpText(
      "after",
      `
Examples:
  tome read war_and_peace.txt --save book.tstate --query-agnostic -m ~/models/SmolLM2-360M-Instruct
  tome ask --state book.tstate "Who does Natasha marry?"
  tome read --state app.tstate new-lines.log --save app.tstate   # go on reading a log that grew`,
    )
    .action(async (input: string | undefined, flags: ReadFlags) => {
      if (!input && !flags.state) throw usage("give an INPUT to read (or --state STATE with more input)");
      if (flags.queryAgnostic) {
        if (flags.question?.length) throw usage("--query-agnostic reads for any question: give no --question");
        flags.policy = "kvzip";
      }
      const questions = (flags.question ?? []).map((q) => ({
        name: "ask",
        label: q,
        framing: askFraming(q, flags.system),
        ...ASK_DEFAULTS,
      }));
      // the state's prefix is `tome ask`'s framing, which does not depend on the question
      const recipe = { name: "ask", framing: askFraming("", flags.system), ...ASK_DEFAULTS };
      await runRead(input ?? null, recipe, questions, flags);
    });
}
