/**
 * Streamed tokenization of the shared corpus through the real CLI: token count
 * against whole-text tokenization, time, and peak RSS (target: < 400 MB).
 *
 *   deno run -A bench/tokens.ts
 */
import { join } from "node:path";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { report, type Row } from "./report.ts";

const root = join(import.meta.dirname!, "..");
const shared = join(root, "..", "shared");
const tokenizerDir = join(shared, "fixtures", "smollm2-tokenizer");
const RSS_TARGET = 400e6;

const rows: Row[] = [];
const tok = await loadTokenizer(tokenizerDir);
for (const name of ["war_and_peace.txt", "tinyshakespeare.txt"]) {
  const path = join(shared, "corpus", name);
  const wholeCount = tok.encode(await Deno.readTextFile(path)).length;
  for (const via of ["file", "stdin"]) {
    const args = [
      "run",
      "-A",
      join(root, "cli/main.ts"),
      "tokens",
      via === "file" ? path : "-",
      "-t",
      tokenizerDir,
      "--json",
    ];
    const child = new Deno.Command(Deno.execPath(), {
      args,
      stdin: via === "stdin" ? "piped" : "null",
      stdout: "piped",
    })
      .spawn();
    if (via === "stdin") await (await Deno.open(path)).readable.pipeTo(child.stdin);
    const out = await child.output();
    const r = JSON.parse(new TextDecoder().decode(out.stdout));
    rows.push({
      input: name,
      via,
      tokens: r.tokens,
      whole_text_tokens: wholeCount,
      equal: r.tokens === wholeCount,
      seconds: r.seconds,
      tokens_per_s: Math.round(r.tokens / r.seconds),
      peak_rss_mb: Math.round(r.peak_rss_bytes / 1e6),
      rss_under_400mb: r.peak_rss_bytes < RSS_TARGET,
    });
  }
}
await report("tokens", "deno run -A bench/tokens.ts", rows);
if (!rows.every((r) => r.equal && r.rss_under_400mb)) Deno.exit(1);
