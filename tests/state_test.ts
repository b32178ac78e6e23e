/**
 * Compress once, ask many: a saved state answers as the read it was saved
 * from; forks answer as independent reads; damaged or mismatched states are
 * refused; a write killed midway leaves nothing that loads.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { TomeError } from "../core/errors.ts";
import {
  fork,
  generate,
  type LoadedModel,
  loadModel,
  loadState,
  read,
  type ReadState,
  saveState,
} from "../core/mod.ts";
import { ROOT } from "./helpers.ts";
import { makeTinyModels } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-state-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const opened: LoadedModel[] = [];
const open = async (
  name: string,
  opts: { positions?: "original" | "compact"; kvDtype?: "float16" | "float32" } = {},
) => {
  const m = await loadModel(models.get(name)!, { kvDtype: "float16", ...opts });
  opened.push(m);
  return m;
};
const m = await open("llama");
const ids = Array.from({ length: 400 }, (_, i) => (i * 17 + 3) % m.config.vocab);
const prefix = [1, 2, 3];
const q1 = [11, 12, 13, 14], q2 = [21, 22, 23];

/** Greedy answer ids and the logits of every step. */
async function answer(state: ReadState, suffix: number[]) {
  const out: number[] = [];
  const rows: Float32Array[] = [];
  for await (
    const _ of generate(state, {
      suffix,
      maxTokens: 10,
      eos: [],
      onToken: (id) => out.push(id),
      onLogits: (r) => rows.push(r.slice()),
    })
  ) { /* drain */ }
  return { out, rows, summary: state.meter.summary() };
}

const info = (questions: string[]) => ({
  run: {
    policy: "snapkv",
    budget: 96,
    chunk: 64,
    positions: "original" as const,
    kvDtype: "float16" as const,
    window: 32,
    questionPatch: true,
    decodeBudget: null,
  },
  recipe: "ask",
  questions,
  queryAgnostic: false,
  prefix,
  input: { bytes: 0, files: 0, sources: [] },
});

Deno.test("a saved state answers exactly as the read it was saved from, with the same KV figures", async () => {
  const opts = { model: m, policy: "snapkv", budget: 96, chunk: 64, prefix, question: q1 };
  const direct = await answer(await read({ ids }, opts), q1);
  const state = await read({ ids }, opts);
  const path = join(root, "a.tstate");
  await saveState(path, m, state.sequence, info(["q1"]));
  const loaded = await loadState(path, m);
  assert.equal(loaded.header.position, prefix.length + ids.length);
  const again = await read({ ids: [] }, { ...opts, prefix: undefined, from: loaded.sequence });
  const fromState = await answer(again, q1);
  assert.deepEqual(fromState.out, direct.out);
  for (let i = 0; i < direct.rows.length; i++) assert.deepEqual(fromState.rows[i], direct.rows[i], `step ${i}`);
  const pick = (s: typeof direct.summary) => [s.kvBytes, s.kvPeakBytes, s.fullKvBytes, s.footprint, s.documentTokens];
  assert.deepEqual(pick(fromState.summary), pick(direct.summary));
});

Deno.test("continuing a saved read over more input equals reading it all at once", async () => {
  const opts = { model: m, policy: "h2o", budget: 80, chunk: 50, prefix, question: q1 };
  const whole = await answer(await read({ ids }, opts), q1);
  // split at a chunk boundary (prefix 3 + 197 = 4 chunks of 50), so both reads cut the same chunks
  const first = await read({ ids: ids.slice(0, 197) }, opts);
  const path = join(root, "half.tstate");
  await saveState(path, m, first.sequence, info([]));
  const loaded = await loadState(path, m);
  const rest = await read({ ids: ids.slice(197) }, { ...opts, prefix: undefined, from: loaded.sequence });
  const continued = await answer(rest, q1);
  assert.deepEqual(continued.out, whole.out);
  assert.deepEqual(continued.rows.at(-1), whole.rows.at(-1));
});

Deno.test("forks of one read answer each question as an independent read of the same state would", async () => {
  // one read shaped by both questions together
  const opts = { model: m, policy: "snapkv", budget: 96, chunk: 64, prefix, question: [...q1, ...q2] };
  const shared = await read({ ids }, opts);
  const a = fork(shared), b = fork(shared);
  const fa = await answer(a, q1);
  const fb = await answer(b, q2);
  const ra = await answer(await read({ ids }, opts), q1);
  const rb = await answer(await read({ ids }, opts), q2);
  assert.deepEqual(fa.out, ra.out);
  assert.deepEqual(fb.out, rb.out);
  assert.deepEqual(fa.rows.at(-1), ra.rows.at(-1));
  // the shared state itself is untouched by its forks
  assert.equal(shared.sequence.position, prefix.length + ids.length);
  assert.equal(shared.meter.summary().generatedTokens, 0);
});

Deno.test("damaged, truncated or mismatched states are refused with exit 15", async () => {
  const state = await read({ ids }, { model: m, policy: "snapkv", budget: 96, chunk: 64, prefix, question: q1 });
  const path = join(root, "good.tstate");
  await saveState(path, m, state.sequence, info(["q1"]));
  const bytes = await Deno.readFile(path);
  const refused = async (data: Uint8Array, pattern: RegExp, model = m) => {
    const p = join(root, `bad-${crypto.randomUUID()}.tstate`);
    await Deno.writeFile(p, data);
    await assert.rejects(loadState(p, model), (err: unknown) => {
      assert.ok(err instanceof TomeError, String(err));
      assert.equal(err.code, 15, err.message);
      assert.match(err.message, pattern);
      return true;
    });
  };
  await refused(bytes.slice(0, bytes.length - 7), /header says otherwise|not a valid/);
  await refused(bytes.slice(0, 30), /not a valid tome state/);
  const flipped = bytes.slice();
  flipped[bytes.length - 100] ^= 0x10;
  await refused(flipped, /checksum/);
  const header = bytes.slice();
  const at = new TextDecoder().decode(bytes.subarray(0, 4096)).indexOf('"lengths":[[');
  header[at + 12] ^= 0x01; // one head's entry count changes: the payload no longer matches it
  await refused(header, /payload size|header says otherwise|entry counts|not JSON/);
  await refused(new TextEncoder().encode("TOMESTATE\u0003garbage"), /version 3, this tome reads 1 and 2/);
  await refused(new TextEncoder().encode("hello, I am a text file with some words in it"), /magic/);
  await refused(bytes, /another model/, await open("mistral"));
  await refused(bytes, /positions/, await open("llama", { positions: "compact" }));
});

Deno.test("a state write killed midway leaves no file that loads, and the next write cleans up after it", async () => {
  const script = join(ROOT, "tests", "state_writer.ts");
  const target = join(root, "killed", "s.tstate");
  await Deno.mkdir(join(root, "killed"));
  const trials = Number(Deno.env.get("TOME_KILL_TRIALS") ?? 3);
  for (let trial = 0; trial < trials; trial++) {
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script, models.get("llama")!, target, JSON.stringify(info([]))],
      stdout: "piped",
      stderr: "inherit",
      env: { TOME_CACHE: join(root, "cache") },
    }).spawn();
    const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    for (let line = ""; !line.includes("ready");) {
      const r = await reader.read();
      if (r.done) assert.fail("the writer ended before it was ready");
      line += r.value;
    }
    await new Promise((r) => setTimeout(r, 20 + Math.random() * 200));
    child.kill("SIGKILL");
    await child.status;
    reader.releaseLock();
    // whatever is at the target is a whole state (a rename is atomic) or nothing
    const exists = await Deno.stat(target).then(() => true, () => false);
    if (exists) await loadState(target, m).catch((err) => assert.fail(`a killed write left a bad state: ${err}`));
  }
  // a dead writer's temporary file goes at the next write; a live writer's (locked) stays, and so does a
  // running writer's file in the moment between creating and locking it; an unlocked file of a reused PID goes
  const dead = new Deno.Command("true").spawn();
  await dead.status;
  const live = { pid: Deno.pid }; // a writer that is running for sure: this process
  const killed = (name: string) => join(root, "killed", name);
  await Deno.writeTextFile(killed(`.s.tstate.tmp-${dead.pid}-1`), "half a state");
  await Deno.writeTextFile(killed(`.s.tstate.tmp-${dead.pid}-2`), "locked: a writer whose name lies");
  const locked = await Deno.open(killed(`.s.tstate.tmp-${dead.pid}-2`), { read: true, write: true });
  assert.ok(await locked.tryLock(true));
  await Deno.writeTextFile(killed(`.s.tstate.tmp-${live.pid}-1`), "being written, not yet locked");
  await Deno.writeTextFile(killed(`.s.tstate.tmp-${live.pid}-2`), "a reused PID's old file");
  const old = new Date(Date.now() - 120_000);
  await Deno.utime(killed(`.s.tstate.tmp-${live.pid}-2`), old, old);
  const state = await read({ ids }, { model: m, policy: "snapkv", budget: 96, chunk: 64, prefix, question: q1 });
  await saveState(target, m, state.sequence, info([]));
  locked.close();
  const left = [...Deno.readDirSync(join(root, "killed"))].map((e) => e.name).sort();
  assert.deepEqual(
    left,
    [`.s.tstate.tmp-${dead.pid}-2`, `.s.tstate.tmp-${live.pid}-1`, "s.tstate"].sort(),
    "stale temporary files are removed, live ones stay",
  );
});

Deno.test({
  name: "cleanup state test files",
  fn: async () => {
    for (const x of opened) await x.session.close();
    await Deno.remove(root, { recursive: true });
  },
  sanitizeResources: false,
});
