/**
 * Memory stays flat with input length: a tiny model (SmolLM2 tokenizer) reads
 * 50K tokens and the whole of War and Peace (~800K) at budget 1024, each in its
 * own process; their peak RSS must be within 1.2× of each other.
 *
 *   deno run -A bench/engine_rss.ts [--budget 1024] [--chunk 512] [--policy snapkv]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { generate, loadModel, read } from "../core/mod.ts";
import { openSource } from "../core/input/source.ts";
import { rss } from "../core/meter/rss.ts";
import { DENO_RUN, report, type Row } from "./report.ts";
import { ensureRandomModel } from "./setup.ts";

const { values: args } = parseArgs({
  options: {
    budget: { type: "string", default: "1024" },
    chunk: { type: "string", default: "512" },
    policy: { type: "string", default: "snapkv" },
    child: { type: "string" },
  },
});
const results = join(import.meta.dirname!, "results", "engine-rss");
const shared = join(import.meta.dirname!, "..", "..", "shared");
const modelDir = join(results, "tiny-llama");
Deno.env.set("TOME_CACHE", join(results, "cache"));

if (args.child) {
  // one measured read: the input file given, then a short answer
  const model = await loadModel(modelDir);
  const question = model.tokenizer.encode("Who is Natasha?");
  const source = await openSource(args.child);
  const t0 = performance.now();
  const state = await read(source, {
    model,
    budget: Number(args.budget),
    chunk: Number(args.chunk),
    policy: args.policy,
    question,
  });
  for await (const _ of generate(state, { suffix: question, maxTokens: 8 })) { /* drain */ }
  const s = state.meter.summary();
  console.log(JSON.stringify({
    tokens: s.documentTokens,
    seconds: (performance.now() - t0) / 1000,
    kvPeakBytes: s.kvPeakBytes,
    fullKvBytes: s.fullKvBytes,
    peakRss: rss().peak,
  }));
  Deno.exit(0);
}

await Deno.mkdir(results, { recursive: true });
await ensureRandomModel(modelDir, "tiny");
const book = join(shared, "corpus", "war_and_peace.txt");
const short = join(results, "war_and_peace_50k.txt");
// ~50K tokens: the book's first 211 KB (4.2 bytes per token)
const bytes = await Deno.readFile(book);
await Deno.writeFile(short, bytes.subarray(0, 211_000));

const rows: Row[] = [];
for (const [label, path] of [["50K tokens", short], ["whole book", book]]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      ...DENO_RUN,
      import.meta.filename!,
      "--child",
      path,
      ...Deno.args,
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const r = JSON.parse(new TextDecoder().decode(out.stdout));
  rows.push({
    input: label,
    tokens: r.tokens,
    seconds: r.seconds,
    tokens_per_s: Math.round(r.tokens / r.seconds),
    kv_peak_kib: Math.round(r.kvPeakBytes / 1024),
    full_cache_mib: Math.round(r.fullKvBytes / 2 ** 20),
    peak_rss_mb: Math.round(r.peakRss / 1e6),
  });
}
const ratio = (rows[1].peak_rss_mb as number) / (rows[0].peak_rss_mb as number);
rows.push({ input: "RSS ratio (book / 50K)", peak_rss_mb: Number(ratio.toFixed(3)) });
await report("engine-rss", `deno run -A bench/engine_rss.ts ${Deno.args.join(" ")}`.trim(), rows);
if (ratio > 1.2) Deno.exit(1);
