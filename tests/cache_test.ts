/**
 * The graph cache (core/model/cache.ts): keys follow the builder's output,
 * damaged entries are found and rebuilt, builds leave nothing behind — after
 * errors, concurrent builds, SIGTERM and SIGKILL at random points.
 *
 * The oracle for every entry is an independent build of the same graph with
 * `buildGraph` into a plain directory (byte-equal files) and SHA-256 of the
 * files computed here with WebCrypto. `TOME_KILL_TRIALS=20` runs 20 kill trials
 * (default 4).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { TomeError } from "../core/errors.ts";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { buildGraph } from "../core/model/graph_build.ts";
import { builderDigest, computeBuilderDigest, probeConfig } from "../core/model/graph_digest.ts";
import { createBuildDir, removePartialBuilds, removeStaleBuilds, SETUP_LOCK } from "../core/model/lock.ts";
import { makeRandomModel, SIZES } from "../core/model/make.ts";
import { DEFAULT_GRAPH_OPTIONS, type GraphOptions } from "../core/model/onnx/decoder.ts";
import { Graph } from "../core/model/onnx/graph.ts";
import { rng, ROOT, tempDir } from "./helpers.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";

const OPTS: GraphOptions = DEFAULT_GRAPH_OPTIONS;
const ENTRY_FILES = ["build.json", "manifest.json", "model.onnx", "model.onnx.data"];

/** A tiny llama checkpoint, its reference graph files, and a fresh cache per test. */
async function fixture(root: string) {
  const tokenizer = await writeTestTokenizer(join(root, "tokenizer"));
  const model = join(root, "model");
  await makeRandomModel(model, { arch: "llama", shape: SIZES.tiny, seed: 3, dtype: "F32", tokenizer });
  const ckpt = await openCheckpoint(model);
  const ref = join(root, "reference");
  await Deno.mkdir(ref);
  await buildGraph(ckpt, OPTS, ref);
  const reference = {
    onnx: await Deno.readFile(join(ref, "model.onnx")),
    data: await Deno.readFile(join(ref, "model.onnx.data")),
  };
  let n = 0;
  /** Points TOME_CACHE at a new empty directory; returns its graphs directory. */
  const freshCache = () => {
    const cache = join(root, `cache${n++}`);
    Deno.env.set("TOME_CACHE", cache);
    return { cache, graphs: join(cache, "graphs") };
  };
  return { model, ckpt, reference, freshCache };
}
type Fixture = Awaited<ReturnType<typeof fixture>>;

const sha256 = async (bytes: Uint8Array) =>
  [...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>))].map((b) =>
    b.toString(16).padStart(2, "0")
  )
    .join("");

/** The entry at `dir` holds exactly the reference graph, and its manifest states the files' true sizes and digests. */
async function assertWhole(f: Fixture, dir: string) {
  const names = (await Array.fromAsync(Deno.readDir(dir))).map((e) => e.name).sort();
  assert.deepEqual(names, ENTRY_FILES);
  const onnx = await Deno.readFile(join(dir, "model.onnx"));
  const data = await Deno.readFile(join(dir, "model.onnx.data"));
  assert.ok(equalBytes(onnx, f.reference.onnx), "model.onnx differs from an independent build");
  assert.ok(equalBytes(data, f.reference.data), "model.onnx.data differs from an independent build");
  const manifest = JSON.parse(await Deno.readTextFile(join(dir, "manifest.json")));
  assert.equal(manifest.files["model.onnx"].size, onnx.length);
  assert.equal(manifest.files["model.onnx"].sha256, await sha256(onnx));
  assert.equal(manifest.files["model.onnx.data"].size, data.length);
  assert.equal(manifest.files["model.onnx.data"].sha256, await sha256(data));
}

/**
 * The graphs directory holds exactly the named entries: no build, probe or
 * removal directory, no temporary file — besides its empty, permanent setup lock.
 */
async function assertOnly(graphs: string, entries: string[]) {
  const names = (await Array.fromAsync(Deno.readDir(graphs))).map((e) => e.name).sort();
  assert.deepEqual(names.filter((n) => n !== SETUP_LOCK), [...entries].sort());
  if (names.includes(SETUP_LOCK)) assert.equal((await Deno.stat(join(graphs, SETUP_LOCK))).size, 0);
}

function equalBytes(a: Uint8Array, b: Uint8Array) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

async function flipByte(path: string, at: number) {
  const bytes = await Deno.readFile(path);
  bytes[at] ^= 0x5a;
  await Deno.writeFile(path, bytes);
}

Deno.test("graph key: the builder's digest follows what the builder emits", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  const c = probeConfig(f.ckpt.config);
  const digest = () => computeBuilderDigest(c, f.ckpt.tiedEmbeddings, OPTS, tmp.path);
  const t0 = performance.now();
  const base = await digest();
  console.log(`builder probe: ${(performance.now() - t0).toFixed(0)} ms (first, cold)`);
  const t1 = performance.now();
  assert.equal(await digest(), base, "the digest is deterministic");
  console.log(`builder probe: ${(performance.now() - t1).toFixed(0)} ms (warm)`);

  // a changed attribute anywhere in the graph changes the digest
  const opN = Graph.prototype.opN;
  Graph.prototype.opN = function (type, inputs, n, attrs = {}, opts = {}) {
    const changed = type === "RMSNormalization" ? { ...attrs, epsilon: { float: 1e-3 } } : attrs;
    return opN.call(this, type, inputs, n, changed, opts);
  };
  try {
    assert.notEqual(await digest(), base, "an RMSNorm epsilon change went unnoticed");
  } finally {
    Graph.prototype.opN = opN;
  }
  // so does a changed transformation of the weights (one value, by one ulp)
  const weight = Graph.prototype.weight;
  Graph.prototype.weight = function (name, type, dims, data) {
    if (name.endsWith("o_proj.weight.T") && data instanceof Float32Array) {
      data = data.slice();
      data[1] = Math.fround(data[1] * (1 + 2 ** -20));
    }
    return weight.call(this, name, type, dims, data);
  };
  try {
    assert.notEqual(await digest(), base, "a weight transformation change went unnoticed");
  } finally {
    Graph.prototype.weight = weight;
  }
  assert.equal(await digest(), base);

  // every graph option and configuration feature reaches the probe
  const others = [
    await computeBuilderDigest(c, f.ckpt.tiedEmbeddings, { ...OPTS, kvDtype: "float16" }, tmp.path),
    await computeBuilderDigest(c, f.ckpt.tiedEmbeddings, { ...OPTS, positions: "compact" }, tmp.path),
    await computeBuilderDigest(c, !f.ckpt.tiedEmbeddings, OPTS, tmp.path),
    await computeBuilderDigest({ ...c, qkNorm: true }, f.ckpt.tiedEmbeddings, OPTS, tmp.path),
    await computeBuilderDigest({ ...c, rmsEps: c.rmsEps * 2 }, f.ckpt.tiedEmbeddings, OPTS, tmp.path),
  ];
  assert.equal(new Set([base, ...others]).size, others.length + 1);
  // the probe leaves nothing behind
  const left = (await Array.fromAsync(Deno.readDir(tmp.path))).map((e) => e.name).filter((n) =>
    n.startsWith(".") && n !== SETUP_LOCK
  );
  assert.deepEqual(left, []);
  // memoized per process
  const t2 = performance.now();
  await builderDigest(f.ckpt, OPTS, tmp.path);
  const t3 = performance.now();
  await builderDigest(f.ckpt, OPTS, tmp.path);
  console.log(`builderDigest: ${(t3 - t2).toFixed(1)} ms first, ${(performance.now() - t3).toFixed(2)} ms memoized`);
});

Deno.test("graph cache: built once, found after, equal to an independent build", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  const { graphs } = f.freshCache();
  const first = await graphFor(f.ckpt, OPTS);
  assert.equal(first.built, true);
  await assertWhole(f, first.dir);
  const second = await graphFor(f.ckpt, OPTS);
  assert.equal(second.built, false);
  assert.equal(second.dir, first.dir);
  await assertOnly(graphs, [basename(first.dir)]);
});

/** Ways an entry gets damaged, each found on the next use. */
const DAMAGES: { name: string; damage: (dir: string) => Promise<void> }[] = [
  { name: "model.onnx truncated", damage: (d) => Deno.truncate(join(d, "model.onnx"), 100) },
  { name: "model.onnx byte flipped", damage: (d) => flipByte(join(d, "model.onnx"), 1000) },
  { name: "model.onnx missing", damage: (d) => Deno.remove(join(d, "model.onnx")) },
  { name: "model.onnx.data missing", damage: (d) => Deno.remove(join(d, "model.onnx.data")) },
  { name: "model.onnx.data truncated", damage: (d) => Deno.truncate(join(d, "model.onnx.data"), 4096) },
  { name: "model.onnx.data byte flipped", damage: (d) => flipByte(join(d, "model.onnx.data"), 20000) },
  {
    name: "model.onnx.data byte flipped within the second of the build, modification time put back",
    damage: async (d) => {
      const path = join(d, "model.onnx.data");
      const st = await Deno.stat(path);
      await flipByte(path, 12345);
      await Deno.utime(path, st.atime!, st.mtime!);
    },
  },
  { name: "manifest missing", damage: (d) => Deno.remove(join(d, "manifest.json")) },
  { name: "manifest garbage", damage: (d) => Deno.writeTextFile(join(d, "manifest.json"), "{not json") },
  {
    name: "only build.json left",
    damage: async (d) => {
      for (const n of ["model.onnx", "model.onnx.data", "manifest.json"]) await Deno.remove(join(d, n));
    },
  },
  {
    name: "a file instead of the directory",
    damage: async (d) => {
      await Deno.remove(d, { recursive: true });
      await Deno.writeTextFile(d, "x");
    },
  },
];

Deno.test("graph cache: a damaged entry is found, reported in one line, removed and rebuilt", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  for (const { name, damage } of DAMAGES) {
    const { graphs } = f.freshCache();
    const { dir } = await graphFor(f.ckpt, OPTS);
    await damage(dir);
    const notices: string[] = [];
    const again = await graphFor(f.ckpt, OPTS, { onNotice: (l) => notices.push(l) });
    assert.equal(notices.length, 1, `${name}: ${notices.length} notices`);
    assert.match(notices[0], /^tome: graph cache entry \S+ was damaged \([^)]+\); rebuilding$/, name);
    assert.ok(notices[0].includes(dir), name);
    assert.equal(again.built, true, name);
    await assertWhole(f, dir);
    await assertOnly(graphs, [basename(dir)]);
    const third = await graphFor(f.ckpt, OPTS, { onNotice: (l) => notices.push(l) });
    assert.equal(third.built, false, `${name}: rebuilt again on the third use`);
    assert.equal(notices.length, 1, name);
  }
});

Deno.test("graph cache: a write to the weights is found even with the modification time put back", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  f.freshCache();
  const { dir } = await graphFor(f.ckpt, OPTS);
  const data = join(dir, "model.onnx.data");
  const manifest = join(dir, "manifest.json");
  // past the second of the build, a use records the file's identity; from then on a use does not digest it
  await new Promise((r) => setTimeout(r, 1100));
  assert.equal((await graphFor(f.ckpt, OPTS)).built, false);
  const recorded = JSON.parse(await Deno.readTextFile(manifest)).files["model.onnx.data"];
  assert.ok(recorded.checkedAt > (await Deno.stat(data)).ctime!.getTime() + 1000, "identity recorded, not racy");
  const st = await Deno.stat(data);
  await flipByte(data, 12345);
  await Deno.utime(data, st.atime!, st.mtime!);
  assert.equal((await Deno.stat(data)).mtime!.getTime(), st.mtime!.getTime());
  const notices: string[] = [];
  assert.equal((await graphFor(f.ckpt, OPTS, { onNotice: (l) => notices.push(l) })).built, true);
  assert.deepEqual(notices.map((l) => l.replace(/entry \S+/, "entry E")), [
    "tome: graph cache entry E was damaged (model.onnx.data content changed); rebuilding",
  ]);
  await assertWhole(f, dir);
});

Deno.test("graph cache: the damage notice is one line on stderr of a real process", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  const { cache } = f.freshCache();
  const { dir } = await graphFor(f.ckpt, OPTS);
  await flipByte(join(dir, "model.onnx.data"), 777);
  const out = await runChild(f.model, cache);
  assert.equal(out.code, 0, out.stderr);
  assert.match(
    out.stderr,
    /^tome: graph cache entry \S+ was damaged \(model\.onnx\.data content changed\); rebuilding\n$/,
  );
  await assertWhole(f, dir);
});

Deno.test("graph cache: a rebuild that fails is cacheDamaged; an unwritable cache is output", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  const { graphs } = f.freshCache();
  const { dir } = await graphFor(f.ckpt, OPTS);
  await Deno.truncate(join(dir, "model.onnx"), 10);
  // the checkpoint's weights vanish after it was opened: the rebuild cannot read them
  const weights = join(f.model, "model.safetensors");
  await Deno.rename(weights, weights + ".away");
  try {
    const err = await graphFor(f.ckpt, OPTS, { onNotice: () => {} }).then(() => null, (e) => e);
    assert.ok(err instanceof TomeError, String(err));
    assert.equal(err.kind, "cacheDamaged");
    assert.equal(err.code, 14);
    assert.match(err.message, /was damaged \(model\.onnx has 10 bytes, expected \d+\) and rebuilding it failed/);
  } finally {
    await Deno.rename(weights + ".away", weights);
  }
  await assertOnly(graphs, []); // the damaged entry is gone, and no partial build is left

  // the cache root lies under a regular file: nothing can be written there
  const file = join(tmp.path, "a-file");
  await Deno.writeTextFile(file, "");
  Deno.env.set("TOME_CACHE", join(file, "cache"));
  const unwritable = await graphFor(f.ckpt, OPTS).then(() => null, (e) => e);
  assert.ok(unwritable instanceof TomeError, String(unwritable));
  assert.equal(unwritable.kind, "output");
  assert.match(unwritable.message, /^cannot write the graph cache \(Not a directory\): /);
});

Deno.test("graph cache: abandoned builds are removed, live ones never", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  const { graphs } = f.freshCache();
  await Deno.mkdir(graphs, { recursive: true });
  // a build held by another live process, and one whose process was killed
  const live = await holdBuildDir(graphs);
  const dead = await holdBuildDir(graphs);
  dead.child.kill("SIGKILL");
  await dead.child.status;
  // builds killed while being set up (no lock yet; an unlocked lock), a half-removed entry
  await Deno.mkdir(join(graphs, ".building-nolock"));
  await Deno.mkdir(join(graphs, ".building-unlocked"));
  await Deno.writeTextFile(join(graphs, ".building-unlocked", "lock"), "1\n");
  await Deno.mkdir(join(graphs, ".removing-x", "sub"), { recursive: true });
  await Deno.writeFile(join(graphs, ".removing-x", "sub", "model.onnx"), new Uint8Array(10));

  const { dir } = await graphFor(f.ckpt, OPTS);
  await assertOnly(graphs, [basename(dir), basename(live.path)]);
  assert.equal(await removeStaleBuilds(graphs), 0);
  live.child.kill("SIGKILL");
  await live.child.status;
  assert.equal(await removeStaleBuilds(graphs), 1);
  await assertOnly(graphs, [basename(dir)]);

  // this process's own partial builds, removed synchronously (for a signal handler)
  const mine = await createBuildDir(graphs);
  await Deno.writeFile(join(mine.path, "model.onnx.data"), new Uint8Array(1000));
  removePartialBuilds();
  assert.equal(await Deno.stat(mine.path).then(() => true, () => false), false);
});

Deno.test("removePartialBuilds: writes still in flight on other threads do not leave the directory behind", async () => {
  // a signal handler runs between awaits: the build's last writes may still be creating files
  await using tmp = await tempDir();
  for (let trial = 0; trial < 10; trial++) {
    const mine = await createBuildDir(tmp.path);
    const writes = Array.from(
      { length: 400 },
      (_, i) => Deno.writeTextFile(join(mine.path, `part${i}`), "x".repeat(1000)).catch(() => {}),
    );
    removePartialBuilds();
    await Promise.all(writes);
    await assertOnly(tmp.path, []);
  }
});

Deno.test("graph cache: concurrent builds of one graph both succeed with one entry", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  // in one process: both miss the cache, both build, one rename wins
  {
    const { graphs } = f.freshCache();
    const [a, b] = await Promise.all([graphFor(f.ckpt, OPTS), graphFor(f.ckpt, OPTS)]);
    assert.equal(a.dir, b.dir);
    assert.ok(a.built && b.built, "both built");
    await assertWhole(f, a.dir);
    await assertOnly(graphs, [basename(a.dir)]);
    assert.equal((await graphFor(f.ckpt, OPTS)).built, false);
  }
  // two processes released at the same moment
  {
    const { cache, graphs } = f.freshCache();
    const barrier = join(tmp.path, "go");
    const children = [0, 1].map(() => startChild(f.model, cache, ["--barrier", barrier]));
    for (const c of children) await c.waitFor("ready");
    await Deno.writeTextFile(barrier, "");
    const results = await Promise.all(children.map((c) => c.finish()));
    for (const r of results) assert.equal(r.code, 0, r.stderr);
    const [a, b] = results.map((r) => JSON.parse(r.lines.at(-1)!));
    assert.equal(a.dir, b.dir);
    console.log(`two processes: built ${a.built} and ${b.built}`);
    await assertWhole(f, a.dir);
    await assertOnly(graphs, [basename(a.dir)]);
    const third = await runChild(f.model, cache);
    assert.equal(JSON.parse(third.lines.at(-1)!).built, false, "the third run rebuilt");
  }
});

Deno.test("graph cache: SIGTERM during a build removes the partial build at once", async () => {
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  const { cache, graphs } = f.freshCache();
  const full = await runChild(f.model, cache);
  const ms = JSON.parse(full.lines.at(-1)!).ms as number;
  const random = rng(11);
  for (let trial = 0; trial < 3; trial++) {
    await Deno.remove(cache, { recursive: true });
    const child = startChild(f.model, cache, ["--on-signal"]);
    await child.waitFor("building");
    await new Promise((r) => setTimeout(r, random() * ms));
    child.kill("SIGTERM");
    const r = await child.finish();
    assert.ok(r.code === 143 || r.code === 0, `exit ${r.code}: ${r.stderr}`);
    // no next run: the interrupted process itself left no build or probe directory
    const names = await Array.fromAsync(Deno.readDir(graphs)).catch(() => []);
    assert.deepEqual(names.filter((e) => e.name.startsWith(".") && e.name !== SETUP_LOCK), []);
  }
});

Deno.test("graph cache: SIGKILL at random points of a build — the next run works and leaves nothing", async () => {
  const trials = Number(Deno.env.get("TOME_KILL_TRIALS") ?? 4);
  await using tmp = await tempDir();
  const f = await fixture(tmp.path);
  const { cache } = f.freshCache();
  const full = await runChild(f.model, cache);
  const ms = JSON.parse(full.lines.at(-1)!).ms as number;
  const entry = basename(JSON.parse(full.lines.at(-1)!).dir);
  const random = rng(2026);
  const outcomes = { killedMidway: 0, finishedFirst: 0 };
  for (let trial = 0; trial < trials; trial++) {
    const { cache, graphs } = f.freshCache();
    if (trial % 2 === 1) {
      // half the trials kill a rebuild of a damaged entry (removal, then build)
      const { dir } = await graphFor(f.ckpt, OPTS);
      await Deno.truncate(join(dir, "model.onnx.data"), 100);
    }
    const child = startChild(f.model, cache);
    await child.waitFor("building");
    await new Promise((r) => setTimeout(r, random() * ms * 1.2));
    child.kill("SIGKILL");
    const r = await child.finish();
    if (r.code === 0) outcomes.finishedFirst++;
    else outcomes.killedMidway++;
    // the next run
    const notices: string[] = [];
    const next = await graphFor(f.ckpt, OPTS, { onNotice: (l) => notices.push(l) });
    assert.equal(basename(next.dir), entry);
    await assertWhole(f, next.dir);
    await assertOnly(graphs, [entry]);
    assert.equal((await graphFor(f.ckpt, OPTS)).built, false);
  }
  console.log(`kill trials: ${JSON.stringify(outcomes)} (a build takes ~${ms.toFixed(0)} ms)`);
});

function basename(path: string) {
  return path.split(/[\\/]/).at(-1)!;
}

const CHILD_ARGS = ["run", "--quiet", "--allow-read", "--allow-write", "--allow-env", "--allow-ffi", "--allow-sys"];

/** Starts tests/cache_child.ts; lines of its stdout arrive as they are written. */
function startChild(model: string, cache: string, extra: string[] = []) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [...CHILD_ARGS, join(ROOT, "tests", "cache_child.ts"), model, ...extra],
    env: { TOME_CACHE: cache, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const lines: string[] = [];
  const waiters: { marker: string; resolve: () => void }[] = [];
  const reading = (async () => {
    let pending = "";
    for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
      pending += text;
      const parts = pending.split("\n");
      pending = parts.pop()!;
      for (const line of parts) {
        lines.push(line);
        for (const w of waiters.filter((w) => w.marker === line)) w.resolve();
      }
    }
  })();
  return {
    kill(signal: Deno.Signal) {
      try {
        child.kill(signal);
      } catch { /* it finished first */ }
    },
    child,
    waitFor(marker: string): Promise<void> {
      if (lines.includes(marker)) return Promise.resolve();
      return new Promise((resolve, reject) => {
        waiters.push({ marker, resolve });
        child.status.then(() => reading.then(() => lines.includes(marker) || reject(new Error(`no ${marker}`))));
      });
    },
    async finish() {
      const status = await child.status;
      await reading;
      return { code: status.code, lines, stderr: await stderr };
    },
  };
}

function runChild(model: string, cache: string, extra: string[] = []) {
  return startChild(model, cache, extra).finish();
}

/** A process that creates a locked build directory under `parent` and holds it until killed. */
async function holdBuildDir(parent: string) {
  const code = `
    const { createBuildDir } = await import(${JSON.stringify(new URL("../core/model/lock.ts", import.meta.url).href)});
    const d = await createBuildDir(Deno.env.get("PARENT"));
    console.log(d.path);
    await new Promise((r) => setTimeout(r, 120000));`;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--quiet", code],
    env: { PARENT: parent, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("the lock holder exited");
    text += value;
  }
  reader.releaseLock();
  child.stdout.cancel().catch(() => {});
  return { child, path: text.trim() };
}
