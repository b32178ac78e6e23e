/**
 * `tome ask` answers, not only prints: on the retrieval model (constructed to
 * look facts up in its context) the answer is the code planted in the
 * document — with the question patch, under PyramidKV's schedule, and not
 * with a window that cannot hold the fact.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { haystack, needle, scoreAnswer } from "../core/eval/haystack.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { makeRetrievalCli, tempDir, tome } from "./helpers.ts";

Deno.test("tome ask on the retrieval model returns the planted code", async (t) => {
  await using d = await tempDir();
  const env = { TOME_CACHE: join(d.path, "cache") };
  const { model, corpus } = await makeRetrievalCli(d.path, env);
  const tok = await loadTokenizer(model);
  const h = haystack(corpus, tok, 3000, 0.3, 77);
  const file = join(d.path, "haystack.txt");
  await Deno.writeTextFile(file, h.text);
  const ask = async (...extra: string[]) => {
    const input = extra.includes("--state") ? [] : [file];
    const r = await tome(
      ["ask", h.needle.prefix, ...input, "--model", model, "--max-tokens", "6", "--json", "--quiet", ...extra],
      { env },
    );
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  // pyramid: the last of the 2 layers gets B/20, so it needs a larger mean budget than snapkv
  for (const [policy, budget] of [["snapkv", "256"], ["pyramid:snapkv", "1024"]]) {
    await t.step(`${policy}, budget ${budget}`, async () => {
      const j = await ask("--policy", policy, "--budget", budget, "--chunk", "256");
      assert.equal(scoreAnswer(j.answer, h.needle.code).exact, true, `answer ${JSON.stringify(j.answer)}`);
      assert.equal(j.policy, policy);
      assert.ok(j.kv_peak_bytes < j.kv_full_bytes, "the cache stayed within its budget");
    });
  }
  await t.step("several questions, one read: each gets its own code", async () => {
    const second = needle("Pierre", "61234");
    const at = h.text.indexOf(". ", Math.floor(h.text.length * 0.7)) + 2;
    const two = join(d.path, "two.txt");
    await Deno.writeTextFile(two, h.text.slice(0, at) + second.fact + " " + h.text.slice(at));
    const r = await tome(
      [
        "ask",
        "-q",
        h.needle.prefix,
        "-q",
        second.prefix,
        two,
        "--model",
        model,
        "--max-tokens",
        "6",
        "--json",
        "--quiet",
        "--budget",
        "256",
        "--chunk",
        "256",
      ],
      { env },
    );
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => l.question), [h.needle.prefix, second.prefix]);
    assert.equal(scoreAnswer(lines[0].answer, h.needle.code).exact, true, lines[0].answer);
    assert.equal(scoreAnswer(lines[1].answer, second.code).exact, true, lines[1].answer);
  });
  await t.step("tome read --save, then ask --state: the answer and KV figures of reading directly", async () => {
    const state = join(d.path, "h.tstate");
    const opts = ["--model", model, "--budget", "256", "--chunk", "256"];
    const saved = await tome(["read", file, "--save", state, "-q", h.needle.prefix, "--quiet", ...opts], { env });
    assert.equal(saved.code, 0, saved.stderr);
    const fromState = await ask("--state", state);
    const direct = await ask("--budget", "256", "--chunk", "256");
    assert.equal(fromState.answer, direct.answer);
    for (const k of ["kv_bytes", "kv_peak_bytes", "kv_full_bytes", "tokens_read", "kv_footprint"]) {
      assert.equal(fromState[k], direct[k], k);
    }
    const info = await tome(["inspect", state, "--json"], { env });
    assert.equal(JSON.parse(info.stdout).questions[0], h.needle.prefix);
  });
  await t.step("streaming keeps only sinks and the end: the fact at 30% depth is gone", async () => {
    const j = await ask("--policy", "streaming", "--budget", "256", "--chunk", "256");
    assert.equal(scoreAnswer(j.answer, h.needle.code).exact, false, `answer ${JSON.stringify(j.answer)}`);
  });
});
