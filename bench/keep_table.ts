/**
 * One table from `tome eval niah` logs (results.jsonl, appended by several runs): recall, KV peak, footprint in
 * entries and in bytes-time, and the critical footprint in both, per method and budget — how `bash bench/eval.sh keep`
 * puts drop-only policies and the keep-instead-of-drop methods side by side at equal KV bytes. From `tome eval ppl`
 * logs (`bash bench/eval.sh keep-ppl`): perplexity against the full cache's, KV peak and footprints.
 *
 *   deno run -A bench/keep_table.ts bench/results/eval/keep/results.jsonl [--json OUT.json]
 */
import { parseArgs } from "node:util";
import type { NiahRow } from "../core/eval/niah.ts";
import type { PplRow } from "../core/eval/ppl.ts";
import { criticalFootprint, summarizeNiah } from "../core/eval/summary.ts";
import { budgetCell, pct, table } from "../cli/commands/eval/report.ts";
import { formatBytes } from "../cli/progress.ts";

const { positionals, values } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: { json: { type: "string" } },
});
const lines = (await Deno.readTextFile(positionals[0])).split("\n").filter(Boolean).map((l) => JSON.parse(l));
if (lines.every((l) => l.kind === "ppl")) {
  const rows: PplRow[] = lines.map((l) => l.result);
  const full = rows.find((r) => r.policy === "full");
  console.log(
    table(
      ["method", "budget", "KL vs full", "perplexity", "vs full", "KV peak", "KV footprint", "in bytes"],
      rows.map((r) => [
        r.policy,
        budgetCell(r.budget),
        r.kl.toPrecision(3),
        r.ppl.toPrecision(4),
        full ? `${((r.ppl / full.ppl - 1) * 100).toFixed(2)}%` : "—",
        formatBytes(r.kv_peak_bytes),
        pct(r.footprint),
        pct(r.footprint_bytes),
      ]),
    ).trimEnd(),
  );
  if (values.json) await Deno.writeTextFile(values.json, JSON.stringify({ rows }) + "\n");
  Deno.exit(0);
}
const rows: NiahRow[] = lines.filter((l) => l.kind === "niah" || l.kind === "curve").map((l) => l.result);
const summary = summarizeNiah(rows);
const full = summary.find((s) => s.policy === "full");
if (!full) throw new Error("no full-cache rows in the log: the critical footprint is measured against them");
const critical = criticalFootprint(summary, full.recall);
const criticalBytes = criticalFootprint(summary, full.recall, 0.9, true);
const cell = (p: string, m: Map<string, number | null>) =>
  p === "full" ? "—" : m.get(p) === null ? "not reached" : pct(m.get(p)!);
const seen = new Set<string>();
console.log(
  table(
    ["method", "budget", "trials", "recall", "KV peak", "KV footprint", "in bytes", "critical footprint", "in bytes"],
    summary.map((s) => {
      const first = !seen.has(s.policy);
      seen.add(s.policy);
      return [
        s.policy,
        budgetCell(s.budget),
        s.trials,
        pct(s.recall),
        formatBytes(s.kv_peak_bytes),
        pct(s.footprint),
        pct(s.footprint_bytes),
        first ? cell(s.policy, critical) : "",
        first ? cell(s.policy, criticalBytes) : "",
      ];
    }),
  ).trimEnd(),
);
if (values.json) {
  await Deno.writeTextFile(
    values.json,
    JSON.stringify({
      summary,
      critical: Object.fromEntries(critical),
      critical_bytes: Object.fromEntries(criticalBytes),
    }) + "\n",
  );
}
