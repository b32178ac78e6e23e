/**
 * How well `tome estimate` predicts a real run: peak KV (exact), peak RSS
 * (target within 25%) and time, on the tiny model over the whole book and on
 * the 360M shape over 8K tokens.
 *
 *   deno run -A bench/estimate.ts [--skip-360m]
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { DENO_RUN, report, type Row } from "./report.ts";

const { values: args } = parseArgs({ options: { "skip-360m": { type: "boolean" } } });
const root = join(import.meta.dirname!, "results", "estimate");
const shared = join(import.meta.dirname!, "..", "..", "shared");
const tokenizer = join(shared, "fixtures", "smollm2-tokenizer");
const book = join(shared, "corpus", "war_and_peace.txt");
const env = { TOME_CACHE: join(root, "cache") };
await Deno.mkdir(root, { recursive: true });

async function tome(argv: string[]): Promise<Record<string, unknown>> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      ...DENO_RUN,
      join(import.meta.dirname!, "..", "cli", "main.ts"),
      ...argv,
    ],
    env,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!out.success) throw new Error(`tome ${argv.join(" ")} failed`);
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const cases: { label: string; size: string; input: string }[] = [{
  label: "tiny, whole book",
  size: "tiny",
  input: book,
}];
if (!args["skip-360m"]) {
  const short = join(root, "wp_8k.txt");
  await Deno.writeFile(short, (await Deno.readFile(book)).subarray(0, 34_000)); // ~8K tokens
  cases.push({ label: "360m, 8K tokens", size: "360m", input: short });
}
const rows: Row[] = [];
for (const c of cases) {
  const model = join(root, `random-${c.size}`);
  if (!(await Deno.stat(join(model, "config.json")).then(() => true, () => false))) {
    await makeRandomModel(model, { arch: "llama", shape: SIZES[c.size], seed: 0, dtype: "BF16", tokenizer });
  }
  const q = "Who is Natasha?";
  const common = ["-m", model, "--max-tokens", "16", "--budget", "1024", "--quiet"];
  const e = await tome(["estimate", c.input, ...common, "--question", q, "--json"]);
  const r = await tome(["ask", q, c.input, ...common, "--json"]);
  const p = e.predicted as Record<string, number> & { seconds: Record<string, number> };
  const rs = r.seconds as Record<string, number>;
  rows.push({
    case: c.label,
    tokens: e.tokens as number,
    kv_peak_predicted: p.kv_peak_bytes,
    kv_peak_actual: r.kv_peak_bytes as number,
    kv_exact: p.kv_peak_bytes === r.kv_peak_bytes,
    rss_predicted_mb: Math.round(p.peak_rss_bytes / 1e6),
    rss_actual_mb: Math.round((r.peak_rss_bytes as number) / 1e6),
    rss_error: Number(((p.peak_rss_bytes - (r.peak_rss_bytes as number)) / (r.peak_rss_bytes as number)).toFixed(3)),
    time_predicted_s: p.seconds.total,
    time_actual_s: rs.total,
  });
}
await report("estimate", `deno run -A bench/estimate.ts ${Deno.args.join(" ")}`.trim(), rows);
