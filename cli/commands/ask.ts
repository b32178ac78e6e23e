import type { Command } from "commander";
import { fsError } from "../../core/errors.ts";
import { ASK_DEFAULTS, askFraming } from "../../recipes/ask.ts";
import { addRunOptions, collectOption, type RunFlags } from "../options.ts";
import { usage } from "../output.ts";
import { runReading } from "../run.ts";

/** `ask`'s own flags: several questions in one read. */
interface AskFlags extends RunFlags {
  question?: string[];
  questions?: string;
}

/**
 * `tome ask QUESTION INPUT`, `tome ask -q Q1 -q Q2 INPUT`, `tome ask --state S QUESTION`:
 * answer questions from a document of any length, reading it once.
 */
export function askCommand(program: Command): void {
  addRunOptions(
    program.command("ask")
      .description("answer questions from a file, a directory, stdin or a saved state, in a fixed KV budget")
      .argument("<args...>", "QUESTION INPUT; or INPUT with -q/--questions; or QUESTION with --state")
      .option("-q, --question <text>", "a question (repeat for several: one read, one answer each)", collectOption)
      .option("--questions <file>", "questions, one per line"),
  )
    .addHelpText(
      "after",
      `
Examples:
  tome ask "Who does Natasha marry?" war_and_peace.txt --model ~/models/SmolLM2-360M-Instruct
  cat big.log | tome ask "why did the job fail?" - --budget 64MiB --json
  tome ask -q "Who is Pierre?" -q "Where is Borodino?" war_and_peace.txt
  tome read war_and_peace.txt --save book.tstate && tome ask --state book.tstate "Who is Pierre?"`,
    )
    .action(async (args: string[], flags: AskFlags) => {
      const listed = [...(flags.question ?? []), ...(flags.questions ? await questionFile(flags.questions) : [])];
      const positional = flags.state ? 0 : 1; // the input, unless answering from a state
      let questions: string[], input: string | null;
      if (listed.length > 0) {
        if (args.length !== positional) {
          throw usage(
            flags.state ? "with --state and -q, give no other argument" : "with -q/--questions, give only INPUT",
          );
        }
        questions = listed;
        input = flags.state ? null : args[0];
      } else {
        if (args.length !== positional + 1) {
          throw usage(flags.state ? "with --state, give the QUESTION only" : "give a QUESTION and an INPUT");
        }
        questions = [args[0]];
        input = flags.state ? null : args[1];
      }
      const recipes = questions.map((q) => ({
        name: "ask",
        label: q,
        framing: askFraming(q, flags.system),
        ...ASK_DEFAULTS,
      }));
      await runReading(input, { recipes, labels: listed.length > 0 ? questions : undefined, questions }, flags);
    });
}

async function questionFile(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw fsError(err, path, "questions file");
  }
  const lines = text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  if (lines.length === 0) throw usage(`--questions ${path} holds no question`);
  return lines;
}
