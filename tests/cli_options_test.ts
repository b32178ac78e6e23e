/**
 * One definition per shared option: every command that runs a model declares
 * `--chunk`, `--positions`, `--kv-dtype`, … the same way, with core's
 * defaults; eval adds its swept lists.
 */
import assert from "node:assert/strict";
import type { Command, Option } from "commander";
import { program } from "../cli/main.ts";
import { DEFAULT_BUDGET, DEFAULT_CHUNK, QUANTIZED_CHUNK, resolveRun } from "../core/mod.ts";
import { readConfig } from "../core/model/config.ts";
import { join } from "node:path";
import { makeTinyModels } from "./model_fixtures.ts";
import { DEFAULT_POLICY } from "../core/policies/mod.ts";

const SHARED = [
  "--model",
  "--chunk",
  "--positions",
  "--device",
  "--kv-dtype",
  "--threads",
  "--duo-mask",
  "--duo-sparsity",
  "--retaining-heads",
];

function commands(): Map<string, Command> {
  const p = program();
  const sub = (name: string) => p.commands.find((c) => c.name() === name)!;
  const ev = sub("eval");
  return new Map([
    ...["ask", "summarize", "code", "estimate"].map((n) => [n, sub(n)] as const),
    ...ev.commands.map((c) => [`eval ${c.name()}`, c] as const),
  ]);
}

const option = (c: Command, long: string): Option | undefined => (c.options as Option[]).find((o) => o.long === long);

Deno.test("the shared run options are declared identically by every command that runs a model", () => {
  const all = commands();
  assert.deepEqual([...all.keys()].filter((k) => k.startsWith("eval")), [
    "eval niah",
    "eval curve",
    "eval ppl",
    "eval fidelity",
  ]);
  const ask = all.get("ask")!;
  for (const long of SHARED) {
    const ref = option(ask, long)!;
    assert.ok(ref, long);
    for (const [name, c] of all) {
      const o = option(c, long);
      assert.ok(o, `${name} has ${long}`);
      assert.deepEqual(
        [o.flags, o.description, o.defaultValue, o.argChoices],
        [ref.flags, ref.description, ref.defaultValue, ref.argChoices],
        `${name} ${long}`,
      );
    }
  }
});

Deno.test("defaults come from core: chunk, budget and policy for runs; eval's lists are its own", () => {
  const all = commands();
  for (const [name, c] of all) {
    // the chunk's default depends on the weights (resolveRun decides), so the option has none of its own
    assert.equal(option(c, "--chunk")!.defaultValue, undefined, name);
    assert.ok(option(c, "--chunk")!.description.includes(`default: ${DEFAULT_CHUNK}, ${QUANTIZED_CHUNK} with q8/q4`));
  }
  for (const name of ["ask", "summarize", "code", "estimate"]) {
    const c = all.get(name)!;
    assert.equal(option(c, "--budget")!.defaultValue, String(DEFAULT_BUDGET), name);
    assert.equal(option(c, "--policy")!.defaultValue, DEFAULT_POLICY, name);
  }
  const niah = all.get("eval niah")!;
  assert.equal(option(niah, "--policy")!.defaultValue, "full,snapkv,streaming");
  assert.equal(option(niah, "--budget")!.defaultValue, "1024");
  assert.equal(option(all.get("eval curve")!, "--budget")!.defaultValue, "64,128,256,512,1024,2048");
  assert.equal(option(all.get("eval fidelity")!, "--lengths")!.defaultValue, "2048");
  assert.ok(option(all.get("eval ppl")!, "--text")!.mandatory);
});

Deno.test("the chunk defaults to 512 with f32/f16/bf16 weights and 256 with q8/q4; a given chunk wins", async () => {
  const root = await Deno.makeTempDir({ prefix: "tome-chunk-default-" });
  try {
    const config = await readConfig((await makeTinyModels(join(root, "models"))).get("llama")!);
    const chunk = async (o: { weights?: string; chunk?: number }) => (await resolveRun(config, o)).chunk;
    assert.equal(await chunk({}), 512);
    for (const w of ["f32", "f16", "bf16"]) assert.equal(await chunk({ weights: w }), 512, w);
    for (const w of ["q8", "q4"]) assert.equal(await chunk({ weights: w }), 256, w);
    assert.equal(await chunk({ weights: "q8", chunk: 96 }), 96);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
