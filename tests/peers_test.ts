/**
 * The peer harness's truncation rules (bench/peers/truncate.ts) against a
 * restatement by index sets, and, where node-llama-cpp is installed, a smoke
 * run of `deno task peers --quick --parts recall`.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { OLLAMA_NUM_KEEP, ollamaTruncate, truncateMiddle } from "../bench/peers/truncate.ts";

/** The ids whose index satisfies `keep`, in order: what a rule that keeps a head and a tail must return. */
const kept = (n: number, keep: (i: number) => boolean) => Array.from({ length: n }, (_, i) => i).filter(keep);

Deno.test("ollamaTruncate keeps num_keep tokens and the tail, exactly n_ctx in all", () => {
  for (const [n, ctx, keep] of [[100, 10, 4], [4097, 4096, 4], [32768, 4096, 4], [50, 8, 0], [30, 5, 9], [7, 7, 4]]) {
    const ids = Array.from({ length: n }, (_, i) => i);
    const got = ollamaTruncate(ids, ctx, keep);
    const k = Math.min(keep, ctx - 1);
    const want = n <= ctx ? ids : kept(n, (i) => i < k || i >= n - (ctx - k));
    assert.deepEqual(got, want, `n ${n} ctx ${ctx} keep ${keep}`);
    assert.deepEqual(got.length, Math.min(n, ctx));
  }
  assert.deepEqual(OLLAMA_NUM_KEEP, 4);
});

Deno.test("truncateMiddle keeps the head and the tail around a dropped middle, leaving room for the answer", () => {
  for (const [n, ctx, reserve] of [[100, 10, 2], [32768, 4096, 8], [11, 11, 1], [9, 20, 8], [1000, 13, 4]]) {
    const ids = Array.from({ length: n }, (_, i) => 1000 + i);
    const got = truncateMiddle(ids, ctx, reserve);
    const room = ctx - reserve;
    const head = Math.floor(room / 2);
    const want = n <= room ? ids : kept(n, (i) => i < head || i >= n - (room - head)).map((i) => 1000 + i);
    assert.deepEqual(got, want, `n ${n} ctx ${ctx} reserve ${reserve}`);
    assert(got.length <= room);
    assert.deepEqual(got.at(-1), ids.at(-1), "the question at the end survives");
  }
  assert.throws(() => truncateMiddle([1, 2, 3], 4, 3));
});

const nlc = Deno.env.get("NODE_LLAMA_CPP_DIR") ?? join(Deno.env.get("HOME") ?? ".", ".cache", "tome", "peers");
const haveNlc = await Deno.stat(join(nlc, "node_modules", "node-llama-cpp", "package.json")).then(
  () => true,
  () => false,
);
const haveNode = await new Deno.Command("node", { args: ["--version"], stdout: "null", stderr: "null" }).output()
  .then((r) => r.success, () => false);
const haveCorpus = await Deno.stat(join(import.meta.dirname!, "..", "..", "shared", "corpus", "war_and_peace.txt"))
  .then(() => true, () => false);
const skip = Deno.env.get("TOME_PEERS_TEST") !== "1"
  ? "set TOME_PEERS_TEST=1 to run it (it runs llama.cpp and takes minutes on 2 cores)"
  : !haveNode
  ? "node is not installed"
  : !haveNlc
  ? `node-llama-cpp is not installed in ${nlc}`
  : !haveCorpus
  ? "../shared/corpus is missing"
  : null;
if (skip) console.log(`peers smoke test skipped: ${skip}`);

Deno.test({
  name: "deno task peers --quick --parts recall: every column answers at every depth, the tables are written",
  ignore: skip !== null,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = await Deno.makeTempDir();
    try {
      const r = await new Deno.Command(Deno.execPath(), {
        args: ["run", "--quiet", "-A", "bench/peers/peers.ts", "--quick", "--parts", "recall", "--out", out],
        cwd: join(import.meta.dirname!, ".."),
        stdout: "piped",
        stderr: "piped",
      }).output();
      const err = new TextDecoder().decode(r.stderr);
      assert(r.success, err.slice(-2000));
      const t = JSON.parse(await Deno.readTextFile(join(out, "recall.json")));
      assert(Array.isArray(t.load_average) && t.load_average.length === 3);
      const depthRows = t.rows.filter((row: Record<string, string>) => row.depth.endsWith("%"));
      assert.deepEqual(depthRows.length, 3);
      // the full cache retrieves by construction; at 2K tokens in a 512 context, Ollama's cut keeps only the end
      for (const row of depthRows) assert.deepEqual(row["tome full"], "yes", JSON.stringify(row));
      assert.deepEqual(depthRows.at(-1)["ollama (n_ctx 512)"], "yes", "a needle at the end survives Ollama's cut");
      assert((await Deno.readTextFile(join(out, "recall.md"))).includes("| depth |"));
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});
