import { join } from "node:path";

/** `deno run` arguments for child processes measured as `deno task tome` runs: V8 in its memory-saving mode. */
export const DENO_RUN = ["run", "--quiet", "-A", "--v8-flags=--optimize-for-size"];

/** One row of a benchmark table: column name → value. */
export type Row = Record<string, string | number | boolean | null>;

/** The machine a figure was measured on, for every table. */
export function machine(): Record<string, string | number> {
  return {
    deno: Deno.version.deno,
    os: `${Deno.build.os}-${Deno.build.arch}`,
    cpus: navigator.hardwareConcurrency,
    memory_gib: Math.round(Deno.systemMemoryInfo().total / 2 ** 30),
  };
}

/**
 * Prints `rows` as a markdown table on stdout and writes them, with the
 * command and machine, to `bench/results/<name>.json`.
 */
export async function report(name: string, command: string, rows: Row[]): Promise<void> {
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (
    v: Row[string],
  ) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(3)) : String(v ?? ""));
  const lines = [
    `| ${cols.join(" | ")} |`,
    `|${cols.map(() => "---").join("|")}|`,
    ...rows.map((r) => `| ${cols.map((c) => cell(r[c])).join(" | ")} |`),
  ];
  const m = machine();
  console.log(lines.join("\n"));
  console.log(`\n\`${command}\` on ${m.os}, ${m.cpus} CPUs, ${m.memory_gib} GiB, Deno ${m.deno}`);
  const dir = join(import.meta.dirname!, "results");
  await Deno.mkdir(dir, { recursive: true });
  const file = join(dir, `${name}.json`);
  await Deno.writeTextFile(
    file,
    JSON.stringify({ name, command, machine: m, date: new Date().toISOString(), rows }, null, 2) + "\n",
  );
  console.log(`(written to ${file})`);
}
