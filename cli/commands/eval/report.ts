/** How `tome eval` reports: aligned tables on stdout, progress notes, and the appended JSONL log. */
import type { Budget } from "../../../core/eval/options.ts";
import { join } from "node:path";
import { fsError } from "../../../core/errors.ts";
import { note } from "../../output.ts";

/** A share as a percentage with one decimal: `0.1234` → `"12.3%"`. */
export const pct = (x: number): string => `${(100 * x).toFixed(1)}%`;

/** A policy and budget as the notes and the heatmap name them: `"snapkv b=256"`, `"full"`. */
export const configLabel = (r: { policy: string; budget: Budget | null }): string =>
  `${r.policy}${r.budget === null ? "" : ` b=${r.budget}`}`;

/** A budget table cell (`"—"` for policies that keep everything). */
export const budgetCell = (budget: Budget | null): string | number => budget ?? "—";

/** A progress note on stderr, unless --quiet. */
export function say(flags: { quiet?: boolean }, message: string): void {
  if (!flags.quiet) note(message);
}

/** An aligned text table: the first column left-aligned, the others right-aligned. */
export function table(header: string[], rows: (string | number)[][]): string {
  const cells = [header, ...rows.map((r) => r.map(String))];
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  return cells.map(line).join("\n") + "\n";
}

/** Appends one line per result to `<out>/results.jsonl`, with the run's kind, date, argv and settings. */
export async function logResults(
  out: string,
  kind: string,
  settings: Record<string, unknown>,
  rows: unknown[],
): Promise<string> {
  const path = join(out, "results.jsonl");
  const run = { kind, date: new Date().toISOString(), argv: Deno.args, settings };
  try {
    await Deno.mkdir(out, { recursive: true });
    await Deno.writeTextFile(path, rows.map((r) => JSON.stringify({ ...run, result: r })).join("\n") + "\n", {
      append: true,
    });
  } catch (err) {
    throw fsError(err, path, "results log");
  }
  return path;
}
