import { Command, CommanderError } from "commander";
import denoJson from "../deno.json" with { type: "json" };
import { EXIT, TomeError } from "../core/errors.ts";
import { askCommand } from "./commands/ask.ts";
import { readCommand } from "./commands/read.ts";
import { cacheCommand } from "./commands/cache.ts";
import { codeCommand } from "./commands/code.ts";
import { completionsCommand } from "./commands/completions.ts";
import { convertCommand } from "./commands/convert.ts";
import { estimateCommand } from "./commands/estimate.ts";
import { evalCommand } from "./commands/eval.ts";
import { inspectCommand } from "./commands/inspect.ts";
import { summarizeCommand } from "./commands/summarize.ts";
import { makeModelCommand } from "./commands/make_model.ts";
import { selftestCommand } from "./commands/selftest.ts";
import { tokensCommand } from "./commands/tokens.ts";
import { StdoutClosed } from "./output.ts";

/** The `tome` program with every subcommand. */
export function program(): Command {
  const p = new Command("tome")
    .description(
      "Summarize, question and analyze documents far larger than a model's context,\n" +
        "offline, with a local model, in a fixed KV-cache memory budget.",
    )
    .version(denoJson.version, "-V, --version")
    .exitOverride()
    .configureOutput({ outputError: oneLine });
  askCommand(p);
  readCommand(p);
  summarizeCommand(p);
  codeCommand(p);
  estimateCommand(p);
  evalCommand(p);
  tokensCommand(p);
  inspectCommand(p);
  makeModelCommand(p);
  cacheCommand(p);
  convertCommand(p);
  selftestCommand(p);
  completionsCommand(p);
  for (const c of p.commands) c.exitOverride().configureOutput({ outputError: oneLine });
  return p;
}

/** Runs the CLI on `args`; returns the exit code. Never throws. */
export async function main(args: string[]): Promise<number> {
  try {
    await program().parseAsync(args, { from: "user" });
    return EXIT.ok;
  } catch (err) {
    return exitCode(err);
  }
}

/** Commander's usage errors as one `tome:` line. */
function oneLine(message: string, write: (s: string) => void): void {
  write(`tome: ${message.trim().replace(/^error: /, "").split("\n")[0]} (see --help)\n`);
}

function exitCode(err: unknown): number {
  if (err instanceof StdoutClosed) return EXIT.ok;
  if (err instanceof CommanderError) {
    // Commander has printed its one-line message already.
    if (err.code === "commander.helpDisplayed" || err.code === "commander.version" || err.code === "commander.help") {
      return EXIT.ok;
    }
    return EXIT.usage;
  }
  if (err instanceof TomeError) {
    console.error(`tome: ${err.message}`);
    return err.code;
  }
  const msg = err instanceof Error ? err.message : String(err);
  console.error(`tome: internal error: ${msg.split("\n")[0]} (set TOME_DEBUG=1 for details)`);
  if (Deno.env.get("TOME_DEBUG")) console.error(err);
  return EXIT.internal;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
