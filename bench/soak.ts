/**
 * Soak: nothing grows that should stay flat.
 *
 *   deno run -A bench/soak.ts [--tokens 10000000] [--runs 200] [--budget 1024] [--part read|ask|all]
 *                             [--sample-every N] [--smaps]
 *
 * The soak runs V8 in the mode tome itself runs in (`--optimize-for-size`, as
 * `deno task tome`, the compiled binary and the benches' DENO_RUN): started
 * without `TOME_SOAK_V8` in its environment it re-runs itself under that flag
 * (set `TOME_SOAK_V8=1` to keep the flags it was started with). This matters
 * for RSS. V8 sizes its young generation by the survival rate it sees; in its
 * default mode the read loop grows the new space from 16 to 64 MiB (two 32 MiB
 * semi-spaces) and shrinks it again at some collections, so RSS stepped by
 * 40–55 MiB with no native growth: with `--smaps` at 2.5M tokens, RSS read
 * 292, 277 at 1M and 316–321 MiB from 1.5M on, V8's new space 32, 16, then
 * 64 MiB, and RSS less V8's heap 195, 204, then 205 MiB. Pinning the
 * semi-spaces at 32 MiB (`--v8-flags=--min-semi-space-size=32,
 * --max-semi-space-size=32`) removed the step; `MALLOC_ARENA_MAX=1` did not.
 * Under `--optimize-for-size` the new space stays at 2 MiB: 10M tokens held
 * RSS at 216–222 MiB from 1M to 10M and RSS less V8's heap at 170–172 MiB.
 *
 * Part `read`: a tiny model (SmolLM2 tokenizer, random weights) reads War and
 * Peace over and over as one streamed document, `--tokens` tokens in all, at
 * budget 1024 (snapkv). At every tenth of the way (or every `--sample-every`
 * tokens) it samples RSS, V8's heap (the physical size of all its spaces)
 * and the rest (native: onnxruntime, malloc, Deno), the open file
 * descriptors (entries of /proc/self/fd) and tokens/s since the last sample;
 * `--smaps` adds resident MiB per kind of mapping and per V8 space, and the
 * mappings that changed most. Each sample is printed on stderr as it is
 * taken. Pass: RSS at every sample from the first tenth
 * (1M of 10M) to the end within 5% of RSS at that tenth (a leak of a few
 * KiB per chunk fails it), the descriptor count the same, tokens/s of the
 * last sample within 25% of the second's (the machine's load is printed
 * beside it).
 *
 * Part `ask`: `--runs` consecutive `tome ask` runs on one document sharing one
 * cache directory. Pass: every run exits 0 and the cache after the last run
 * holds the same files with the same sizes as after the first (its entries,
 * nothing more: no leaked temp files, locks or builds).
 *
 * Prints tables and writes bench/results/soak-PART.json. Exit 1 when a check fails.
 */
import { parseArgs } from "node:util";
import v8 from "node:v8";
import { join } from "node:path";
import { loadModel, read } from "../core/mod.ts";
import { DENO_RUN, report, type Row } from "./report.ts";
import { ensureRandomModel } from "./setup.ts";

if (!Deno.env.get("TOME_SOAK_V8")) {
  // V8 as tome runs it: its young generation is sized differently in the default mode (see above)
  const child = new Deno.Command(Deno.execPath(), {
    args: [...DENO_RUN, import.meta.filename!, ...Deno.args],
    env: { TOME_SOAK_V8: "--optimize-for-size" },
  }).spawn();
  Deno.exit((await child.status).code);
}

const { values: args } = parseArgs({
  options: {
    tokens: { type: "string", default: "2000000" },
    runs: { type: "string", default: "200" },
    budget: { type: "string", default: "1024" },
    part: { type: "string", default: "all" },
    "sample-every": { type: "string" },
    smaps: { type: "boolean", default: false },
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
const MiB = (kib: number) => Math.round(kib / 1024);

/**
 * Resident memory of this process by kind of mapping, from /proc/self/smaps (KiB):
 * brk heap (glibc's main arena), malloc arenas (anonymous, 64 MiB-aligned, ≤ 64 MiB:
 * the arenas glibc gives other threads), other anonymous mappings by size, file mappings.
 */
function smaps(): { kinds: Record<string, number>; each: Map<string, number> } {
  const kinds: Record<string, number> = {};
  const each = new Map<string, number>();
  let key = "", kind = "";
  for (const line of Deno.readTextFileSync("/proc/self/smaps").split("\n")) {
    const head = line.match(/^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \d+\s*(.*)$/);
    if (head) {
      const start = BigInt("0x" + head[1]), size = Number(BigInt("0x" + head[2]) - start) / 1024;
      const name = head[4];
      key = `${head[1]} ${size}K ${head[3]} ${name}`;
      if (name === "[heap]") kind = "brk";
      else if (name.startsWith("/")) kind = name.includes(".so") ? "file:lib" : "file:" + name.split("/").pop();
      else if (name) kind = name;
      else if (start % (64n << 20n) === 0n && size <= 65536) kind = "anon:arena";
      else kind = size < 1024 ? "anon:<1M" : size < 32768 ? "anon:1-32M" : "anon:>=32M";
      continue;
    }
    const rss = line.match(/^Rss:\s+(\d+) kB/);
    if (rss && key) {
      const n = Number(rss[1]);
      kinds[kind] = (kinds[kind] ?? 0) + n;
      if (n) each.set(key, n);
    }
  }
  return { kinds, each };
}
const mapsAt: Map<string, number>[] = [];
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
  const every = args["sample-every"] ? Number(args["sample-every"]) : target / 10;
  let next = every;
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
      const mem = Deno.memoryUsage();
      const v8Heap = v8.getHeapSpaceStatistics().reduce((a, sp) => a + sp.physical_space_size, 0);
      const extra: Row = {};
      if (args.smaps) {
        const m = smaps();
        mapsAt.push(m.each);
        for (const [k, v] of Object.entries(m.kinds).sort()) if (v >= 1024) extra[k] = MiB(v);
        for (const sp of v8.getHeapSpaceStatistics()) {
          const mib = Math.round(sp.physical_space_size / 2 ** 20);
          if (mib) extra["v8:" + sp.space_name.replace(/_space$/, "")] = mib;
        }
      }
      samples.push({
        part: "read",
        tokens: e.tokens,
        seconds: Math.round((now - t0) / 100) / 10,
        rss_mib: Math.round(mem.rss / 2 ** 20),
        heap_mib: Math.round(mem.heapUsed / 2 ** 20),
        v8_heap_mib: Math.round(v8Heap / 2 ** 20),
        native_mib: Math.round((mem.rss - v8Heap) / 2 ** 20),
        external_mib: Math.round(mem.external / 2 ** 20),
        open_fds: fds(),
        tok_per_s: Math.round((e.tokens - last.tokens) / ((now - last.t) / 1000)),
        kv_kib: Math.round(e.kvBytes / 1024),
        load: Math.round(load() * 10) / 10,
        ...extra,
      });
      console.error(JSON.stringify(samples[samples.length - 1]));
      last = { tokens: e.tokens, t: now };
      next += every;
      if (e.tokens >= target) done = true;
    },
  });
  await model.session.close();
  rows.push(...samples);
  if (mapsAt.length > 1) {
    // the mappings whose resident size changed most from the first sample to the last
    const a = mapsAt[0], b = mapsAt[mapsAt.length - 1];
    const keys = new Set([...a.keys(), ...b.keys()]);
    const grew = [...keys].map((k) => [k, (b.get(k) ?? 0) - (a.get(k) ?? 0)] as const)
      .sort((x, y) => Math.abs(y[1]) - Math.abs(x[1])).slice(0, 15);
    console.log("largest changes in resident KiB, first sample → last:");
    for (const [k, d] of grew) console.log(`  ${d > 0 ? "+" : ""}${d}\t${a.get(k) ?? 0} → ${b.get(k) ?? 0}\t${k}`);
  }
  // the reference: the first sample at a tenth of the way or later; every sample from there on is held to it
  const from = samples.findIndex((r) => (r.tokens as number) >= target / 10);
  const held = samples.slice(from);
  const first = held[0], end = samples[samples.length - 1];
  const second = held[1] ?? first;
  const rss = held.map((r) => r.rss_mib as number);
  const ref = first.rss_mib as number;
  const worst = held.reduce(
    (w, r) => Math.abs((r.rss_mib as number) / ref - 1) > Math.abs(w / ref - 1) ? r.rss_mib as number : w,
    ref,
  );
  const worstAt = held.find((r) => r.rss_mib === worst)!.tokens;
  const speedRatio = (end.tok_per_s as number) / (second.tok_per_s as number);
  rows.push({
    part: `read: from ${first.tokens} tokens to the end`,
    tokens: end.tokens,
    rss_mib: `${Math.min(...rss)}–${Math.max(...rss)} (×${(Math.min(...rss) / ref).toFixed(3)}–×${
      (Math.max(...rss) / ref).toFixed(3)
    } of ${ref})`,
    open_fds: `${first.open_fds} → ${end.open_fds}`,
    tok_per_s: `×${speedRatio.toFixed(2)} (the last sample vs the second)`,
  });
  const tomeMode = Deno.env.get("TOME_SOAK_V8") === "--optimize-for-size";
  console.log(
    (tomeMode ? "V8 in tome's mode (--optimize-for-size)" : "V8 with the flags the soak was started with") +
      ` (its default mode moves RSS by 40–55 MiB with the young generation's size). RSS is held from a tenth` +
      ` of the way on: every sample within 5% of ${ref} MiB.`,
  );
  if (Math.abs(worst / ref - 1) > 0.05) {
    failures.push(`RSS ${ref} MiB at ${first.tokens} tokens → ${worst} MiB at ${worstAt} (more than 5% apart)`);
  }
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
