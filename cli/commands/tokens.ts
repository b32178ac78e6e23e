import type { Command } from "commander";
import { openSource } from "../../core/input/source.ts";
import { rss } from "../../core/meter/rss.ts";
import { tokenize } from "../../core/tokens/stream.ts";
import { loadTokenizer } from "../../core/tokens/tokenizer.ts";
import { formatBytes, formatCount, formatSeconds, StatusLine } from "../progress.ts";
import { note, round, usage, writeStdout } from "../output.ts";

interface TokensOptions {
  tokenizer?: string;
  model?: string;
  json?: boolean;
  progress?: boolean;
}

/** `tome tokens PATH|-`: counts the tokens of an input, streamed. */
export function tokensCommand(program: Command): void {
  program.command("tokens")
    .description("count the tokens of a file, a directory of code, or stdin (streamed, any size)")
    .argument("<input>", "a file, a directory, or - for stdin")
    .option("-t, --tokenizer <dir>", "directory with tokenizer.json (default: --model, or $TOME_MODEL)")
    .option("-m, --model <dir>", "model directory (its tokenizer is used)")
    .option("--json", "print one JSON object instead of the count")
    .option("--no-progress", "no progress line on stderr")
    .addHelpText(
      "after",
      `
Example:
  tome tokens ../shared/corpus/war_and_peace.txt --tokenizer ../shared/fixtures/smollm2-tokenizer
  cat notes.txt | tome tokens - -t ./my-model --json`,
    )
    .action(async (input: string, opts: TokensOptions) => {
      const dir = opts.tokenizer ?? opts.model ?? Deno.env.get("TOME_MODEL");
      if (!dir) throw usage("tokens needs --tokenizer DIR (or --model DIR, or TOME_MODEL)");
      const tokenizer = await loadTokenizer(dir);
      const started = performance.now();
      const source = await openSource(input);
      const status = new StatusLine(opts.progress !== false && Deno.stderr.isTerminal() ? "tty" : "quiet");
      let tokens = 0;
      for await (const ids of source.text.pipeThrough(tokenize(tokenizer))) {
        tokens += ids.length;
        status.update(() => {
          const s = (performance.now() - started) / 1000;
          const of = source.totalBytes ? ` / ${formatBytes(source.totalBytes)}` : "";
          const pct = source.totalBytes ? ` ${(100 * source.stats.bytes / source.totalBytes).toFixed(0)}%` : "";
          return [
            `tokens ${formatCount(tokens)} · ${formatBytes(source.stats.bytes)}${of}${pct} · ${
              formatCount(tokens / s)
            } tok/s · ${formatSeconds(s)}`,
          ];
        });
      }
      status.clear();
      const seconds = (performance.now() - started) / 1000;
      const { bytes, replacedChars, files, skipped } = source.stats;
      if (opts.json) {
        await writeStdout(
          JSON.stringify({
            tokens,
            bytes,
            replaced_chars: replacedChars,
            files,
            seconds: round(seconds, 3),
            peak_rss_bytes: rss().peak,
          }) + "\n",
        );
      } else {
        await writeStdout(`${tokens}\n`);
      }
      if (replacedChars > 0) note(`${replacedChars} invalid UTF-8 sequence(s) replaced with U+FFFD`);
      if (skipped.length > 0) note(`${skipped.length} file(s) skipped (binary, unreadable or loops)`);
    });
}
