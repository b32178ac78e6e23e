/** `tome eval ppl`: perplexity of a text's last tokens with its prefix read through each policy. */
import type { Command } from "commander";
import { type PplRow, runPpl } from "../../../core/eval/ppl.ts";
import { fsError } from "../../../core/errors.ts";
import { intFlag } from "../../options.ts";
import { writeStdout } from "../../output.ts";
import { formatBytes } from "../../progress.ts";
import { addEvalOptions, type EvalFlags, evalSettings } from "./flags.ts";
import { budgetCell, configLabel, logResults, pct, say, table } from "./report.ts";

async function readText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    throw fsError(err, path, "text");
  }
}

function pplTable(rows: PplRow[]): string {
  const full = rows.find((r) => r.policy === "full");
  return table(
    [
      "policy",
      "budget",
      "perplexity",
      "vs full",
      "KL vs full",
      "KV footprint",
      "in bytes",
      "peak KV fraction",
      "KV peak",
    ],
    rows.map((r) => [
      r.policy,
      budgetCell(r.budget),
      r.ppl.toFixed(3),
      full ? `${((r.ppl / full.ppl - 1) * 100).toFixed(2)}%` : "—",
      r.kl.toPrecision(3),
      pct(r.footprint),
      pct(r.footprint_bytes),
      pct(r.peak_fraction),
      formatBytes(r.kv_peak_bytes),
    ]),
  );
}

/** Adds `tome eval ppl`. */
export function pplCommand(ev: Command): void {
  addEvalOptions(
    ev.command("ppl").description(
      "perplexity of a text's last tokens given its prefix compressed by each policy vs the full prefix",
    )
      .requiredOption("--text <file>", "the text")
      .option("--last <n>", "tokens scored at the end", "512"),
    { policy: "full,snapkv,streaming", budget: "1024", lengths: "2048", depths: "0" },
  )
    .addHelpText(
      "after",
      "\nExample:\n  tome eval ppl -m ~/models/SmolLM2-360M --text book.txt --policy full,snapkv,knorm --budget 512,2048",
    )
    .action(async (flags: EvalFlags) => {
      const s = await evalSettings(flags);
      const text = await readText(flags.text!);
      const rows: PplRow[] = [];
      for await (const r of runPpl({ ...s, text, last: intFlag(flags.last, "--last")! })) {
        rows.push(r);
        say(
          flags,
          `${configLabel(r)}: ppl ${r.ppl.toFixed(3)} · KL vs full ${r.kl.toPrecision(3)} · footprint ${
            pct(r.footprint)
          }`,
        );
      }
      const log = await logResults(flags.out, "ppl", s, rows);
      await writeStdout(flags.json ? JSON.stringify({ rows, log }) + "\n" : pplTable(rows));
    });
}
