/**
 * Streamed tokenization of input without whitespace through the real CLI
 * (`tome tokens FILE --json`): 4 MiB of one repeated character, 4 MB and 50 MB
 * of base64. Time, tokens per second and peak RSS; with `--before DIR` (a
 * checkout of older code, `deno install`ed) the same runs with that code, each
 * under `--timeout` seconds, and their token counts compared. CPU seconds (the
 * child's user + system time) are the figure to compare on a shared machine.
 *
 *   deno run -A bench/tokens_solid.ts [--before /tmp/tome-before] [--timeout 300]
 */
import { join } from "node:path";
import { DENO_RUN, report, type Row } from "./report.ts";

const root = join(import.meta.dirname!, "..");
const tokenizerDir = join(root, "..", "shared", "fixtures", "smollm2-tokenizer");
const arg = (name: string) => {
  const i = Deno.args.indexOf(name);
  return i >= 0 ? Deno.args[i + 1] : undefined;
};
const before = arg("--before");
const timeoutS = Number(arg("--timeout") ?? 300);

/** Writes base64 of pseudo-random bytes, `chars` characters long, to `path`. */
async function writeBase64(path: string, chars: number): Promise<void> {
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  const enc = new TextEncoder();
  const block = new Uint8Array(3 * 16_384);
  for (let done = 0; done < chars;) {
    crypto.getRandomValues(block);
    let s = "";
    for (let i = 0; i < block.length; i += 3 * 1024) s += btoa(String.fromCharCode(...block.subarray(i, i + 3 * 1024)));
    s = s.slice(0, chars - done);
    await file.write(enc.encode(s));
    done += s.length;
  }
  file.close();
}

const dir = await Deno.makeTempDir({ prefix: "tome-bench-solid-" });
const inputs: [string, string][] = [];
{
  const p = join(dir, "one-char-4MiB.txt");
  await Deno.writeTextFile(p, "a".repeat(4 << 20));
  inputs.push(["4 MiB of one character", p]);
  for (const [name, chars] of [["4 MB base64", 4e6], ["50 MB base64", 50e6]] as const) {
    const q = join(dir, `${chars}.b64`);
    await writeBase64(q, chars);
    inputs.push([name, q]);
  }
}

interface Run {
  tokens: number | null;
  seconds: number;
  cpuSeconds: number | null;
  peak_rss_bytes: number | null;
  finished: boolean;
}

async function runCli(codeRoot: string, path: string): Promise<Run> {
  const started = performance.now();
  // bash's `time` gives the child's CPU seconds: on a shared machine, the work done, whatever the load
  const args = [
    ...DENO_RUN,
    join(codeRoot, "cli/main.ts"),
    "tokens",
    path,
    "-t",
    tokenizerDir,
    "--json",
    "--no-progress",
  ];
  const child = new Deno.Command("bash", {
    args: [
      "-c",
      'TIMEFORMAT="cpu %U %S"; time timeout -s KILL "$0" "$@" 2>/dev/null',
      String(timeoutS),
      Deno.execPath(),
      ...args,
    ],
    cwd: codeRoot,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const out = await child.output();
  const seconds = (performance.now() - started) / 1000;
  const cpu = new TextDecoder().decode(out.stderr).match(/cpu ([\d.]+) ([\d.]+)/);
  const cpuSeconds = cpu ? Number(cpu[1]) + Number(cpu[2]) : null;
  if (!out.success) return { tokens: null, seconds, cpuSeconds, peak_rss_bytes: null, finished: false };
  const r = JSON.parse(new TextDecoder().decode(out.stdout));
  return { tokens: r.tokens, seconds: r.seconds, cpuSeconds, peak_rss_bytes: r.peak_rss_bytes, finished: true };
}

const rows: Row[] = [];
for (const [name, path] of inputs) {
  const bytes = (await Deno.stat(path)).size;
  const codes: [string, string][] = before ? [["before", before], ["after", root]] : [["after", root]];
  const counts: (number | null)[] = [];
  for (const [code, codeRoot] of codes) {
    const r = await runCli(codeRoot, path);
    counts.push(r.tokens);
    rows.push({
      input: name,
      bytes,
      code,
      finished: r.finished ? "yes" : `no (killed at ${timeoutS} s)`,
      tokens: r.tokens,
      seconds: Math.round(r.seconds * 10) / 10,
      cpu_seconds: r.cpuSeconds === null ? null : Math.round(r.cpuSeconds * 10) / 10,
      cpu_us_per_byte: r.finished && r.cpuSeconds !== null ? Math.round(r.cpuSeconds / bytes * 1e8) / 100 : null,
      peak_rss_mb: r.peak_rss_bytes === null ? null : Math.round(r.peak_rss_bytes / 1e6),
    });
  }
  if (counts.length === 2 && counts.every((c) => c !== null)) {
    rows.at(-1)!.equal_to_before = counts[0] === counts[1];
  }
}
await Deno.remove(dir, { recursive: true });
await report("tokens_solid", `deno run -A bench/tokens_solid.ts${before ? ` --before ${before}` : ""}`, rows);
