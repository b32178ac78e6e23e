/**
 * Soak: nothing grows that should stay flat.
 *
 *   deno run -A bench/soak.ts [--tokens 10000000] [--runs 200] [--budget 1024] [--part read|ask|all]
 *
 * Part `read`: a tiny model (SmolLM2 tokenizer, random weights) reads War and
 * Peace over and over as one streamed document, `--tokens` tokens in all, at
 * budget 1024 (snapkv). At every tenth of the way it samples RSS, the open
 * file descriptors (entries of /proc/self/fd) and tokens/s over the last
 * tenth. Pass: RSS at the end within 5% of RSS at a tenth (1M of 10M), the
 * descriptor count the same, tokens/s of the last tenth within 25% of the
 * second's (the machine's load is printed beside it).
 *
 * Part `ask`: `--runs` consecutive `tome ask` runs on one document sharing one
 * cache directory. Pass: every run exits 0 and the cache after the last run
 * holds the same files with the same sizes as after the first (its entries,
 * nothing more: no leaked temp files, locks or builds).
 *
 * Prints tables and writes bench/results/soak-PART.json. Exit 1 when a check fails.
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { loadModel, read } from "../core/mod.ts";
import { DENO_RUN, report, type Row } from "./report.ts";
import { ensureRandomModel } from "./setup.ts";

const { values: args } = parseArgs({
  options: {
    tokens: { type: "string", default: "2000000" },
    runs: { type: "string", default: "200" },
    budget: { type: "string", default: "1024" },
    part: { type: "string", default: "all" },
  },
});
const target = Number(args.tokens);
const runs = Number(args.runs);
const results = join(import.meta.dirname!, "results", "soak");
const shared = join(import.meta.dirname!, "..", "..", "shared");
const book = join(shared, "corpus", "war_and_peace.txt");
const modelDir = join(results, "tiny-llama");
const cache = join(results, "cache");
Deno.env.set("TOME_CACHE", cache);
await Deno.mkdir(results, { recursive: true });
await ensureRandomModel(modelDir, "tiny");

const load = () => Deno.loadavg()[0];
const fds = () => [...Deno.readDirSync("/proc/self/fd")].length;
const rows: Row[] = [];
const failures: string[] = [];
const command = `deno run -A bench/soak.ts ${Deno.args.join(" ")}`.trim();

if (args.part === "read" || args.part === "all") {
  const model = await loadModel(modelDir);
  const text = await Deno.readTextFile(book);
  // the book again and again, in 64 KiB segments, until the reader has had enough
  let done = false;
  let at = 0;
  const stream = new ReadableStream<string>({
    pull(c) {
      if (done) return c.close();
      c.enqueue(text.slice(at, at + 65536));
      at = at + 65536 >= text.length ? 0 : at + 65536;
    },
  });
  const samples: Row[] = [];
  let next = target / 10;
  let last = { tokens: 0, t: performance.now() };
  const t0 = performance.now();
  await read(stream, {
    model,
    budget: Number(args.budget),
    chunk: 512,
    policy: "snapkv",
    onEvent: (e) => {
      if (e.type !== "chunk" || e.tokens < next) return;
      const now = performance.now();
      samples.push({
        part: "read",
        tokens: e.tokens,
        seconds: Math.round((now - t0) / 100) / 10,
        rss_mib: Math.round(Deno.memoryUsage().rss / 2 ** 20),
        heap_mib: Math.round(Deno.memoryUsage().heapUsed / 2 ** 20),
        external_mib: Math.round(Deno.memoryUsage().external / 2 ** 20),
        open_fds: fds(),
        tok_per_s: Math.round((e.tokens - last.tokens) / ((now - last.t) / 1000)),
        kv_kib: Math.round(e.kvBytes / 1024),
        load: Math.round(load() * 10) / 10,
      });
      last = { tokens: e.tokens, t: now };
      next += target / 10;
      if (e.tokens >= target) done = true;
    },
  });
  await model.session.close();
  rows.push(...samples);
  const first = samples[0], end = samples[samples.length - 1];
  const second = samples[1] ?? first;
  const rssRatio = (end.rss_mib as number) / (first.rss_mib as number);
  const speedRatio = (end.tok_per_s as number) / (second.tok_per_s as number);
  rows.push({
    part: "read: end vs a tenth",
    tokens: end.tokens,
    rss_mib: `×${rssRatio.toFixed(3)}`,
    open_fds: `${first.open_fds} → ${end.open_fds}`,
    tok_per_s: `×${speedRatio.toFixed(2)} (vs the second tenth)`,
  });
  if (Math.abs(rssRatio - 1) > 0.05) failures.push(`RSS ${first.rss_mib} → ${end.rss_mib} MiB`);
  if (first.open_fds !== end.open_fds) failures.push(`open fds ${first.open_fds} → ${end.open_fds}`);
  if (Math.abs(speedRatio - 1) > 0.25) failures.push(`tokens/s ×${speedRatio.toFixed(2)} (machine load ${load()})`);
}

if (args.part === "ask" || args.part === "all") {
  const doc = join(results, "doc.txt");
  await Deno.writeTextFile(doc, (await Deno.readTextFile(book)).slice(0, 20_000));
  const askCache = join(results, "ask-cache");
  await Deno.remove(askCache, { recursive: true }).catch(() => {});
  const listing = (): Map<string, number> => {
    const out = new Map<string, number>();
    const walk = (d: string) => {
      for (const e of Deno.readDirSync(d)) {
        const p = join(d, e.name);
        if (e.isDirectory) walk(p);
        else out.set(p.slice(askCache.length + 1), Deno.statSync(p).size);
      }
    };
    walk(askCache);
    return out;
  };
  const main = join(import.meta.dirname!, "..", "cli", "main.ts");
  let firstListing: Map<string, number> | null = null;
  const t0 = performance.now();
  for (let i = 1; i <= runs; i++) {
    const out = await new Deno.Command(Deno.execPath(), {
      args: [...DENO_RUN, main, "ask", "Who is Natasha?", doc, "-m", modelDir, "--max-tokens", "4", "--no-progress"],
      env: { TOME_CACHE: askCache, NO_COLOR: "1" },
      stdout: "null",
      stderr: "piped",
    }).output();
    if (out.code !== 0) failures.push(`run ${i}: exit ${out.code}: ${new TextDecoder().decode(out.stderr).trim()}`);
    const l = listing();
    firstListing ??= l;
    if (i === 1 || i === runs || i % Math.max(1, Math.floor(runs / 4)) === 0) {
      rows.push({
        part: "ask",
        run: i,
        cache_files: l.size,
        cache_kib: Math.round([...l.values()].reduce((a, b) => a + b, 0) / 1024),
        seconds: Math.round((performance.now() - t0) / 100) / 10,
        load: Math.round(load() * 10) / 10,
      });
    }
  }
  const end = listing();
  const same = firstListing !== null && end.size === firstListing.size &&
    [...end].every(([p, n]) => firstListing!.get(p) === n);
  if (!same) {
    const extra = [...end.keys()].filter((p) => firstListing?.get(p) !== end.get(p));
    failures.push(`the cache changed after the first run: ${extra.slice(0, 5).join(", ")}`);
  }
}

await report(`soak-${args.part}`, command, rows);
if (failures.length) {
  console.log(`FAILED:\n  ${failures.join("\n  ")}`);
  Deno.exit(1);
}
console.log("soak: all checks hold");
