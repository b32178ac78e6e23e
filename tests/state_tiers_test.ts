/**
 * Saved states of readings that keep what they evict: MiKV's low tier, thin
 * keys (ThinK) and merges (D2O, KVMerger, anchors, EMS). The oracle is the
 * one-run path: asking from a saved state answers with the logits, tokens and
 * KV figures of reading and asking in one run, and reading A, saving, then
 * reading B from the state leaves the K/V rows, the low tier and the merge
 * weights of reading A+B at once, bit for bit. Each continuation test also
 * checks it can tell: resuming with the merger's state forgotten (or the low
 * tier emptied) must differ. Version-1 files (a restatement of the writer
 * before version 2) still load; damaged sections are refused with exit 15.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { TomeError } from "../core/errors.ts";
import {
  generate,
  type LoadedModel,
  loadModel,
  loadState,
  read,
  type ReadState,
  readStateHeader,
  saveState,
} from "../core/mod.ts";
import { resolveRun, type RunOptions } from "../core/engine/resolve.ts";
import type { KvStore } from "../core/engine/kv_store.ts";
import type { LowStore } from "../core/engine/low_store.ts";
import { packLayer } from "../core/state/tiers.ts";
import { sha256Hex } from "../core/state/digest.ts";
import { makeTinyModels } from "./model_fixtures.ts";
import { makeRetrievalCli, tempDir, tome } from "./helpers.ts";
import { haystack, scoreAnswer } from "../core/eval/haystack.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";

const root = await Deno.makeTempDir({ prefix: "tome-state-tiers-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));
const opened: LoadedModel[] = [];
const open = async (lowTier?: "int4" | "int2") => {
  // thin keys need ThinK's query factor: plain models carry it (drop-only and merging runs ignore it)
  const m = await loadModel(models.get("llama")!, {
    kvDtype: "float16",
    ...(lowTier ? { lowTier } : { queryEnergy: true }),
  });
  opened.push(m);
  return m;
};
const plain = await open();
const int4 = await open("int4");
const vocab = plain.config.vocab;
// runs of four alike tokens: neighbouring keys alike enough for KVMerger's sets, so merged entries get merged into again
const ids = Array.from({ length: 400 }, (_, i) => ((i >> 2) * 7 + 3) % vocab);
const prefix = [1, 2, 3];
const question = [11, 12, 13, 14];

/** Greedy answer ids, the logits of every step and the meter's summary. */
async function answer(state: ReadState) {
  const out: number[] = [];
  const rows: Float32Array[] = [];
  for await (
    const _ of generate(state, {
      suffix: question,
      maxTokens: 8,
      eos: [],
      onToken: (id) => out.push(id),
      onLogits: (r) => rows.push(r.slice()),
    })
  ) { /* drain */ }
  return { out, rows, summary: state.meter.summary() };
}

/** What a header records of the run (as the CLI fills it). */
const info = (merge: string | null) => ({
  run: {
    policy: "h2o",
    budget: 48,
    chunk: 50,
    positions: "original" as const,
    kvDtype: "float16" as const,
    window: 32,
    questionPatch: true,
    decodeBudget: null,
    merge,
  },
  recipe: "ask",
  questions: [],
  queryAgnostic: false,
  prefix,
  input: { bytes: 0, files: 0, sources: [] },
});

/** A method under test: its run options and the model its graph needs. */
interface Method {
  name: string;
  opts: Partial<RunOptions>;
  model: LoadedModel;
}
const METHODS: Method[] = [
  { name: "low tier int4", opts: { keepEvicted: "int4" }, model: int4 },
  { name: "low tier int4, low budget 20", opts: { keepEvicted: "int4", lowBudget: 20 }, model: int4 },
  { name: "d2o", opts: { merge: "d2o" }, model: plain },
  { name: "kvmerger", opts: { merge: "kvmerger" }, model: plain },
  { name: "anchors", opts: { merge: "anchors" }, model: plain },
  { name: "ems (policy)", opts: { policy: "ems" }, model: plain },
  { name: "thin keys 0.5", opts: { keyChannels: 0.5 }, model: plain },
];

const runFor = (m: Method) =>
  resolveRun(m.model.config, {
    policy: "h2o",
    budget: 48,
    chunk: 50,
    positions: "original",
    kvDtype: "float16",
    ...m.opts,
  });

/** Every retained row, low-tier row and statistic of a sequence, packed (for bitwise comparison). */
function snapshot(store: KvStore, low: LowStore | undefined) {
  const d = store.config.headDim;
  return {
    layers: store.layers.map((c) => ({ lengths: Array.from(c.lengths), ...packLayer(c, d) })),
    low: low?.layers.map((_, l) => low.packed(l)),
  };
}

/** Saves `state` with `run`, returns the loaded state (on a fresh run resolved like `m`'s). */
async function saveAndLoad(m: Method, state: ReadState, name: string) {
  const path = join(root, `${name}.tstate`);
  await saveState(path, m.model, state.sequence, info(state.run.merge), state.run);
  const run = await runFor(m);
  return { path, run, loaded: await loadState(path, m.model, undefined, run) };
}

Deno.test("asking from a saved state gives the one-run answer, logits and KV figures (low tier, merges, thin keys)", async (t) => {
  for (const m of METHODS) {
    await t.step(m.name, async () => {
      const direct = await answer(await read({ ids }, { model: m.model, run: await runFor(m), prefix, question }));
      const state = await read({ ids }, { model: m.model, run: await runFor(m), prefix, question });
      const { path, run, loaded } = await saveAndLoad(m, state, `ask-${m.name}`);
      const bytes = await Deno.readFile(path);
      assert.equal(bytes[9], 2, "a state with a tier, thin keys or a merger is format version 2");
      const again = await read({ ids: [] }, { model: m.model, run, from: loaded.sequence });
      const fromState = await answer(again);
      assert.deepEqual(fromState.out, direct.out);
      assert.equal(fromState.rows.length, direct.rows.length);
      for (let i = 0; i < direct.rows.length; i++) assert.deepEqual(fromState.rows[i], direct.rows[i], `logits ${i}`);
      const pick = (s: typeof direct.summary) => [s.kvBytes, s.kvPeakBytes, s.footprint, s.footprintBytes];
      assert.deepEqual(pick(fromState.summary), pick(direct.summary));
    });
  }
});

Deno.test("reading A, saving, then reading B from the state leaves what reading A+B at once does", async (t) => {
  for (const m of METHODS) {
    await t.step(m.name, async () => {
      const whole = await read({ ids }, { model: m.model, run: await runFor(m), prefix, question });
      // split at a chunk boundary (prefix 3 + 197 = 4 chunks of 50), so both reads cut the same chunks
      const first = await read({ ids: ids.slice(0, 197) }, { model: m.model, run: await runFor(m), prefix, question });
      const { path, run, loaded } = await saveAndLoad(m, first, `half-${m.name}`);
      const rest = await read({ ids: ids.slice(197) }, { model: m.model, run, from: loaded.sequence, question });
      const expect = snapshot(whole.sequence.store, whole.sequence.low);
      assert.deepEqual(snapshot(rest.sequence.store, rest.sequence.low), expect);
      const merger = whole.run.plan.prefill.merge;
      if (merger) {
        // the merge weights and thresholds go on as in one run
        const w = (r: typeof whole) => {
          const st = r.run.plan.prefill.merge!.state;
          const out: (number | undefined)[] = [];
          r.sequence.store.layers.forEach((c, l) =>
            c.lengths.forEach((n, h) => {
              for (let i = 0; i < n; i++) out.push(st.weights.peek(l, h, c.positions[h * c.capacity + i]));
              out.push(st.thresholds?.get(l, h));
            })
          );
          return out;
        };
        assert.deepEqual(w(rest), w(whole));
        assert.ok(w(whole).some((x) => x !== undefined && x !== merger.state.weights.base), "something was merged");
      }
      const a = await answer(rest), b = await answer(whole);
      assert.deepEqual(a.out, b.out);
      assert.deepEqual(a.rows.at(-1), b.rows.at(-1));
      // the test can tell: resuming without the saved merger state or low tier leaves other rows
      if (merger || m.opts.keepEvicted) {
        const forgetful = await runFor(m);
        const again = await loadState(path, m.model, undefined, forgetful);
        if (merger) {
          forgetful.plan.prefill.merge!.state.weights.clear();
          forgetful.plan.prefill.merge!.state.thresholds?.clear();
        } else {
          for (const x of again.sequence.low!.layers) x.lengths.fill(0);
        }
        const off = await read({ ids: ids.slice(197) }, {
          model: m.model,
          run: forgetful,
          from: again.sequence,
          question,
        });
        assert.notDeepEqual(snapshot(off.sequence.store, off.sequence.low), expect);
      }
      if (merger?.state.thresholds) {
        // D2O's thresholds alone matter too: the weights kept, the thresholds forgotten
        const run = await runFor(m);
        const again = await loadState(path, m.model, undefined, run);
        run.plan.prefill.merge!.state.thresholds!.clear();
        const off = await read({ ids: ids.slice(197) }, { model: m.model, run, from: again.sequence, question });
        assert.notDeepEqual(snapshot(off.sequence.store, off.sequence.low), expect);
      }
    });
  }
});

Deno.test("a merged state loaded without a run resolves one from its header, its merger holding the weights", async () => {
  const m = METHODS.find((x) => x.name === "d2o")!;
  const whole = await read({ ids }, { model: m.model, run: await runFor(m), prefix, question });
  const first = await read({ ids: ids.slice(0, 197) }, { model: m.model, run: await runFor(m), prefix, question });
  const path = join(root, "no-run.tstate");
  await saveState(path, m.model, first.sequence, info("d2o"), first.run);
  const loaded = await loadState(path, m.model);
  assert.equal(loaded.run?.plan.prefill.merge?.name, "d2o");
  const rest = await read({ ids: ids.slice(197) }, {
    model: m.model,
    run: loaded.run,
    from: loaded.sequence,
    question,
  });
  assert.deepEqual(snapshot(rest.sequence.store, undefined), snapshot(whole.sequence.store, undefined));
  // saving a merged reading without its run would lose the weights: refused
  await assert.rejects(saveState(join(root, "x.tstate"), m.model, first.sequence, info("d2o")), /needs its run/);
});

/** HEAD's writer before version 2, restated: magic, 1, header length, header, per layer six arrays, heads packed. */
async function writeV1(path: string, header: Record<string, unknown>, store: KvStore): Promise<void> {
  const d = store.config.headDim;
  const parts: Uint8Array[] = [];
  for (const c of store.layers) {
    const n = c.lengths.reduce((a, b) => a + b, 0);
    const keys = new Uint16Array(n * d), values = new Uint16Array(n * d);
    const stats = [new Int32Array(n), new Float32Array(n), new Float32Array(n), new Float32Array(n)];
    let at = 0;
    c.lengths.forEach((len, h) => {
      for (let i = 0; i < len; i++, at++) {
        const slot = h * c.capacity + i;
        keys.set(c.keys.subarray(slot * d, slot * d + d), at * d);
        values.set(c.values.subarray(slot * d, slot * d + d), at * d);
        stats[0][at] = c.positions[slot];
        stats[1][at] = c.accumulated[slot];
        stats[2][at] = c.seen[slot];
        stats[3][at] = c.importance[slot];
      }
    });
    for (const a of [keys, values, ...stats]) parts.push(new Uint8Array(a.buffer));
  }
  const bytes = parts.reduce((a, p) => a + p.length, 0);
  const h = { ...header, version: 1, payload: { bytes, sha256: await sha256Hex(...parts) } };
  const json = new TextEncoder().encode(JSON.stringify(h));
  const head = new Uint8Array(14 + json.length);
  head.set(new TextEncoder().encode("TOMESTATE"));
  head[9] = 1;
  new DataView(head.buffer).setUint32(10, json.length, true);
  head.set(json, 14);
  await Deno.writeFile(path, new Uint8Array([...head, ...parts.flatMap((p) => [...p])]));
}

Deno.test("version 1: plain states are still written as version 1, and a version-1 file loads and answers", async () => {
  const run = () => resolveRun(plain.config, { policy: "h2o", budget: 48, chunk: 50, positions: "original" });
  const direct = await answer(await read({ ids }, { model: plain, run: await run(), prefix, question }));
  const state = await read({ ids }, { model: plain, run: await run(), prefix, question });
  const path = join(root, "plain.tstate");
  const header = await saveState(path, plain, state.sequence, info(null));
  const written = await Deno.readFile(path);
  assert.equal(written[9], 1, "no tier, thin keys or merger: version 1");
  const old = join(root, "v1.tstate");
  await writeV1(old, { ...header }, state.sequence.store);
  const v1 = await Deno.readFile(old);
  assert.deepEqual(
    written.subarray(written.length - header.payload.bytes),
    v1.subarray(v1.length - header.payload.bytes),
  );
  const loaded = await loadState(old, plain);
  const fromV1 = await answer(await read({ ids: [] }, { model: plain, run: await run(), from: loaded.sequence }));
  assert.deepEqual(fromV1.out, direct.out);
  assert.deepEqual(fromV1.rows, direct.rows);
});

/** Rewrites a state file: its header (parsed JSON) and payload edited, the payload's size and checksum fixed. */
async function rewrite(
  bytes: Uint8Array,
  // deno-lint-ignore no-explicit-any
  edit: (h: Record<string, any>, payload: Uint8Array) => Uint8Array | void,
  version?: number,
): Promise<Uint8Array> {
  const len = new DataView(bytes.buffer, bytes.byteOffset).getUint32(10, true);
  const h = JSON.parse(new TextDecoder().decode(bytes.subarray(14, 14 + len)));
  let payload: Uint8Array = bytes.slice(14 + len);
  payload = edit(h, payload) ?? payload;
  h.payload = { bytes: payload.length, sha256: await sha256Hex(payload) };
  if (version !== undefined) h.version = version;
  const json = new TextEncoder().encode(JSON.stringify(h));
  const out = new Uint8Array(14 + json.length + payload.length);
  out.set(bytes.subarray(0, 10));
  if (version !== undefined) out[9] = version;
  new DataView(out.buffer).setUint32(10, json.length, true);
  out.set(json, 14);
  out.set(payload, 14 + json.length);
  return out;
}

Deno.test("damaged sections and mismatched runs are refused with exit 15 and a clear message", async () => {
  const refused = async (data: Uint8Array, pattern: RegExp, model: LoadedModel, m?: Method) => {
    const p = join(root, `bad-${crypto.randomUUID()}.tstate`);
    await Deno.writeFile(p, data);
    const run = m ? await runFor(m) : undefined;
    await assert.rejects(loadState(p, model, undefined, run), (err: unknown) => {
      assert.ok(err instanceof TomeError, String(err));
      assert.equal(err.kind, "stateInvalid", err.message);
      assert.match(err.message, pattern);
      return true;
    });
  };
  const save = async (m: Method) => {
    const state = await read({ ids }, { model: m.model, run: await runFor(m), prefix, question });
    const path = join(root, `good-${m.name}.tstate`);
    const header = await saveState(path, m.model, state.sequence, info(state.run.merge), state.run);
    return { bytes: await Deno.readFile(path), header };
  };
  const [low, d2o, thin] = ["low tier int4", "d2o", "thin keys 0.5"].map((n) => METHODS.find((x) => x.name === n)!);
  const L = await save(low);
  await refused(await rewrite(L.bytes, (h) => void (h.low.bits = 3)), /low tier bits/, int4);
  await refused(
    await rewrite(L.bytes, (h) => void (h.low.lengths[0][0] = h.low.budget + 1)),
    /at most its budget/,
    int4,
  );
  await refused(await rewrite(L.bytes, (h) => void (h.low.group = 5)), /low tier group/, int4);
  await refused(await rewrite(L.bytes, (h) => void (h.run.lowBudget = 3)), /low tier and run options/, int4);
  await refused(await rewrite(L.bytes, (h) => void delete h.run.keepEvicted), /without its run option/, int4);
  await refused(await rewrite(L.bytes, () => {}, 1), /version 1 holds only K\/V/, int4);
  await refused(L.bytes, /int4, the model is loaded without a low tier/, plain);
  await refused(L.bytes, /the run's differs/, int4, { ...low, opts: { keepEvicted: "int4", lowBudget: 7 } });
  await refused(L.bytes, /the run keeps none/, int4, { ...low, opts: {} });
  // a low tier whose entry count grows without its rows: the payload no longer matches
  await refused(await rewrite(L.bytes, (h) => void (h.low.lengths[0][0] -= 1)), /payload size|header says/, int4);
  const D = await save(d2o);
  await refused(await rewrite(D.bytes, (h) => void (h.merger.name = "kvmerger")), /another merge method/, plain);
  await refused(D.bytes, /was merged by d2o, the run merges by anchors/, plain, { ...d2o, opts: { merge: "anchors" } });
  // a merger this tome does not know, with no run given: the header's run does not resolve
  await refused(
    await rewrite(D.bytes, (h) => void (h.merger.name = h.run.merge = "blend")),
    /run options do not resolve \(--merge: unknown method "blend"/,
    plain,
  );
  // weights are the last 9·L·K + 8·entries bytes; a negative weight, then a threshold's set flag 2
  const entries = D.header.lengths.flat().reduce((a, b) => a + b, 0);
  const LK = plain.config.layers * plain.config.kvHeads;
  await refused(
    await rewrite(D.bytes, (_, p) => {
      const at = p.length - 9 * LK - 8 * entries;
      new DataView(p.buffer, p.byteOffset).setFloat64(at, -1, true);
    }),
    /merge weights/,
    plain,
  );
  await refused(await rewrite(D.bytes, (_, p) => void (p[p.length - 9 * LK] = 2)), /merge thresholds/, plain);
  const T = await save(thin);
  await refused(
    await rewrite(T.bytes, (h) => void (h.thin.channels = plain.config.headDim)),
    /thin key channels/,
    plain,
  );
  await refused(await rewrite(T.bytes, (h) => void (h.thin.counts[0][0] += 1000)), /at most the entries/, plain);
  await refused(await rewrite(T.bytes, (h) => void (h.thin.chosen[0] = false)), /thin rows without channels/, plain);
  await refused(await rewrite(T.bytes, (h) => void (h.run.keyChannels = 3)), /thin keys and run options/, plain);
  // the channels are the first section part, right after the layers' K/V: make one head's descend
  const layerBytes = T.header.payload.bytes - T.header.thin!.chosen.filter((x) => x).length * 4 *
      plain.config.kvHeads * T.header.thin!.channels;
  await refused(
    await rewrite(T.bytes, (_, p) => {
      const v = new DataView(p.buffer, p.byteOffset);
      v.setInt32(layerBytes, 5, true);
      v.setInt32(layerBytes + 4, 2, true);
    }),
    /thin key channels/,
    plain,
  );
  await refused(T.bytes, new RegExp(`holds thin keys of ${plain.config.headDim / 2} channels`), plain, {
    ...thin,
    opts: {},
  });
});

Deno.test({
  name: "cleanup state tier test files",
  fn: async () => {
    for (const x of opened) await x.session.close();
    await Deno.remove(root, { recursive: true });
  },
  sanitizeResources: false,
});

Deno.test("tome read --save with --keep-evicted, --merge or --key-channels, then ask --state: the one-run answer and KV figures", async (t) => {
  await using d = await tempDir();
  const env = { TOME_CACHE: join(d.path, "cache") };
  const { model, corpus } = await makeRetrievalCli(d.path, env);
  const h = haystack(corpus, await loadTokenizer(model), 700, 0.3, 77);
  const file = join(d.path, "haystack.txt");
  await Deno.writeTextFile(file, h.text);
  const common = ["--model", model, "--budget", "96", "--chunk", "128", "--positions", "original"];
  const ask = async (input: string[], extra: string[]) => {
    const r = await tome([
      "ask",
      h.needle.prefix,
      ...input,
      ...common,
      "--max-tokens",
      "6",
      "--json",
      "--quiet",
      ...extra,
    ], {
      env,
    });
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout);
  };
  for (const flags of [["--keep-evicted", "int4"], ["--merge", "d2o"], ["--key-channels", "0.5"]]) {
    await t.step(flags.join(" "), async () => {
      const state = join(d.path, `${flags[1]}.tstate`);
      const saved = await tome(["read", file, "--save", state, "-q", h.needle.prefix, "--quiet", ...common, ...flags], {
        env,
      });
      assert.equal(saved.code, 0, saved.stderr);
      const [fromState, direct] = [await ask(["--state", state], []), await ask([file], flags)];
      assert.equal(fromState.answer, direct.answer);
      assert.equal(scoreAnswer(direct.answer, h.needle.code).exact, true, `answer ${JSON.stringify(direct.answer)}`);
      for (
        const k of ["kv_bytes", "kv_peak_bytes", "kv_full_bytes", "tokens_read", "kv_footprint", "kv_footprint_bytes"]
      ) {
        assert.equal(fromState[k], direct[k], k);
      }
      // tome inspect names what the state keeps beside the whole-key K/V
      const shown = await tome(["inspect", state, "--json"], { env });
      assert.equal(shown.code, 0, shown.stderr);
      const info = JSON.parse(shown.stdout);
      assert.deepEqual(
        [info.low_tier?.tier ?? null, info.merge, info.key_channels?.channels ?? null],
        [
          flags[0] === "--keep-evicted" ? "int4" : null,
          flags[0] === "--merge" ? "d2o" : null,
          flags[0] === "--key-channels" ? info.model.headDim / 2 : null,
        ],
      );
      // no eviction while answering: the low tier the state holds is the one the direct run ends with
      if (info.low_tier) assert.equal(info.low_tier.kv_bytes, direct.kv_low_bytes);
      if (flags[0] !== "--merge") return;
      // reading more after a merged state (another file) goes on merging, with the state's method
      const more = join(d.path, "more.tstate");
      const resumed = await tome(["read", "--state", state, file, "--save", more, "--quiet", "--model", model], {
        env,
      });
      assert.equal(resumed.code, 0, resumed.stderr);
      const header = await readStateHeader(more);
      assert.deepEqual([header.merger?.name, header.input.sources.length], ["d2o", 2]);
    });
  }
});
