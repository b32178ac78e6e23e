/**
 * `deno task bundle`: what node_modules keeps, the pinned Deno's integrity,
 * and the bundle run with no network, an empty HOME and an empty Deno cache.
 *
 * The default suite stages the unpacked bundle with the running Deno (it is the
 * pinned 2.9.6) and runs it offline: seconds. The archive itself (npm download,
 * xz -9: about two minutes on 2 cores) is built and unpacked when
 * TOME_BUNDLE_TEST=1, or taken from TOME_BUNDLE=path/to/tome-….tar.xz.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { join, relative } from "node:path";
import {
  BUNDLE_TARGETS,
  bundleName,
  DENO_VERSION,
  integrityOf,
  keepModuleFile,
  launcherScript,
  stageBundle,
} from "../cli/bundle.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";
import { ROOT } from "./helpers.ts";

const LINUX_X64 = BUNDLE_TARGETS["linux-x64"];
const MODULES = join(ROOT, "node_modules");
const dec = new TextDecoder();

/** The command prefix that cuts the network off (a new network namespace with only loopback), or why there is none. */
async function offlinePrefix(): Promise<{ prefix: string[] } | { reason: string }> {
  for (const prefix of [["unshare", "-n"], ["unshare", "-rn"]]) {
    try {
      const o = await new Deno.Command(prefix[0], { args: [...prefix.slice(1), "true"], stderr: "null" }).output();
      if (o.success) return { prefix };
    } catch {
      return { reason: "unshare is not installed" };
    }
  }
  return { reason: "unshare -n is not permitted here (no network namespaces)" };
}
const offline = await offlinePrefix();
const onLinuxX64 = Deno.build.os === "linux" && Deno.build.arch === "x86_64";
if ("reason" in offline) console.log(`bundle_test: offline runs skipped: ${offline.reason}`);
if (!onLinuxX64) {
  console.log(`bundle_test: offline runs skipped: the bundle is for linux-x64, this is ${Deno.build.target}`);
}

/** Every file (and symlink) under `dir`, relative, `/`-separated. */
function files(dir: string, base = dir): string[] {
  const out: string[] = [];
  for (const e of Deno.readDirSync(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) out.push(...files(p, base));
    else out.push(relative(base, p));
  }
  return out;
}

Deno.test("bundle: node_modules keeps the target's native files, drops other platforms', keeps every package", () => {
  const all = files(MODULES);
  const ort = all.filter((f) => f.includes("onnxruntime-node/bin/napi-v6/"));
  const platforms = new Set(ort.map((f) => f.split("napi-v6/")[1].split("/").slice(0, 2).join("/")));
  assert.ok(platforms.size >= 4, `onnxruntime-node ships several platforms: ${[...platforms]}`);
  for (const f of ort) {
    assert.equal(keepModuleFile(f, LINUX_X64), f.includes("/napi-v6/linux/x64/"), f);
  }
  assert.ok(ort.some((f) => f.endsWith("/linux/x64/libonnxruntime.so.1") && keepModuleFile(f, LINUX_X64)));
  assert.ok(ort.some((f) => f.endsWith("/linux/x64/onnxruntime_binding.node") && keepModuleFile(f, LINUX_X64)));
  const pbCli = all.filter((f) => f.includes("/protobufjs/cli/"));
  assert.ok(pbCli.length > 100 && pbCli.every((f) => !keepModuleFile(f, LINUX_X64)), "protobufjs/cli dropped");
  const musl = all.filter((f) => /-musl\/[^/]+\.node$/.test(f));
  assert.ok(musl.length > 0 && musl.every((f) => !keepModuleFile(f, LINUX_X64)), "musl addons dropped");
  const gnu = all.filter((f) => /resvg-js-linux-x64-gnu\/[^/]+\.node$/.test(f));
  assert.ok(gnu.length === 1 && keepModuleFile(gnu[0], LINUX_X64), "the glibc addon kept");
  // Deno reinstalls a package whose marker or manifest is gone: every one stays
  const packages = [...Deno.readDirSync(join(MODULES, ".deno"))].filter((e) => e.isDirectory).map((e) => e.name);
  assert.ok(packages.length > 50);
  for (const p of packages) assert.ok(keepModuleFile(`.deno/${p}/.initialized`, LINUX_X64), p);
  for (const f of all.filter((f) => /\.(js|mjs|cjs|json)$/.test(f) && !f.includes("/protobufjs/cli/"))) {
    assert.ok(keepModuleFile(f, LINUX_X64), f);
  }
});

Deno.test("bundle: npm integrity strings agree with node:crypto; the pinned one is well formed", async () => {
  for (const text of ["", "tome", "x".repeat(100_000)]) {
    const bytes = new TextEncoder().encode(text);
    assert.equal(await integrityOf(bytes), `sha512-${createHash("sha512").update(bytes).digest("base64")}`);
  }
  assert.match(LINUX_X64.integrity, /^sha512-[A-Za-z0-9+/]{86}==$/);
  assert.equal(bundleName("linux-x64", "1.2.3"), "tome-1.2.3-linux-x64.tar.xz");
});

Deno.test("bundle: the launcher is valid sh and runs main.ts offline with tome's permissions", async () => {
  const script = launcherScript();
  const o = await new Deno.Command("sh", { args: ["-n", "-c", script] }).output();
  assert.ok(o.success, "sh -n accepts the launcher");
  for (const flag of ["--cached-only", "--node-modules-dir=auto", "--v8-flags=--optimize-for-size", "--allow-ffi"]) {
    assert.ok(script.includes(flag), flag);
  }
  assert.ok(!/--allow-net|--allow-run|--allow-all|-A /.test(script), "no network or subprocess permission");
});

/** Runs the unpacked bundle in `dir` with no network, an empty HOME and an empty Deno cache. */
async function runOffline(dir: string, scratch: string, prefix: string[]) {
  const home = join(scratch, "home");
  await Deno.mkdir(home, { recursive: true });
  const tome = async (...args: string[]) => {
    const r = await run(...args);
    assert.equal(r.code, 0, `tome ${args.join(" ")} exited ${r.code}: ${r.stderr.slice(-2000)}`);
    return r;
  };
  const run = async (...args: string[]) => {
    const o = await new Deno.Command(prefix[0], {
      args: [...prefix.slice(1), join(dir, "tome"), ...args],
      clearEnv: true,
      env: { PATH: "/usr/bin:/bin", HOME: home, TMPDIR: scratch, NO_COLOR: "1" },
      cwd: scratch,
      stdout: "piped",
      stderr: "piped",
    }).output();
    return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
  };
  assert.ok(!(await Deno.stat(join(dir, ".deno")).then(() => true, () => false)), "an empty Deno cache to start");

  const help = await tome("--help");
  for (const c of ["ask", "eval", "make-model", "selftest"]) assert.match(help.stdout, new RegExp(`^  ${c} `, "m"));

  const tokenizer = await writeTestTokenizer(join(scratch, "tokenizer"));
  await tome("make-model", "tiny", "--out", join(scratch, "tiny"), "--tokenizer", tokenizer);
  await tome("make-model", "retrieval", "--out", join(scratch, "retrieval"));
  // the fact sits in filler; the retrieval model provably copies what followed its key
  const filler = Array.from({ length: 300 }, (_, i) => `Line ${i} of the river notes, quiet and grey.`);
  filler.splice(170, 0, "The pass code of Natasha is 48213.");
  const doc = join(scratch, "doc.txt");
  await Deno.writeTextFile(doc, filler.join("\n") + "\n");
  const answer = await tome(
    "ask",
    "The pass code of Natasha is",
    doc,
    "--model",
    join(scratch, "retrieval"),
    "--max-tokens",
    "8",
    "--quiet",
  );
  assert.match(answer.stdout, /^ 48213/);
  const tiny = await tome("ask", "what is this?", doc, "--model", join(scratch, "tiny"), "--max-tokens", "4", "--json");
  const j = JSON.parse(tiny.stdout);
  assert.ok(j.generated_tokens >= 1 && j.generated_tokens <= 4 && j.tokens_read > 1000, tiny.stdout);

  // eval: haystacks from the bundled project's text, the table, and plots through the bundled resvg addon
  const evalOut = join(scratch, "eval");
  const niah = await tome(
    "eval",
    "niah",
    "-m",
    join(scratch, "retrieval"),
    "--policy",
    "full",
    "--budget",
    "256",
    "--lengths",
    "512",
    "--depths",
    "50",
    "--out",
    evalOut,
  );
  assert.match(niah.stdout, /^full\s+\S+\s+1\s+100\.0%/m, "the full cache finds the needle");
  assert.ok((await Deno.stat(join(evalOut, "niah-heatmap.png"))).size > 1000);

  // the CPU passes; WebGPU (where a Vulkan driver is installed) may fail until the graph is WebGPU-clean: exit 12
  const self = await run("selftest", "--json");
  const report = JSON.parse(self.stdout);
  assert.equal(self.code, report.pass ? 0 : 12, self.stderr);
  assert.equal(report.devices[0].device, "cpu");
  assert.equal(report.devices[0].pass, true);
  assert.ok(report.devices[0].prefill_tokens_per_s > 0);
  // Deno's cache was filled inside the bundle, nothing under HOME but tome's own graph cache
  assert.ok((await Deno.stat(join(dir, ".deno"))).isDirectory);
  for await (const e of Deno.readDir(home)) assert.equal(e.name, ".cache");
}

Deno.test({
  name: "bundle: the staged bundle runs offline (--help, make-model, ask, eval, selftest), empty HOME and cache",
  ignore: "reason" in offline || !onLinuxX64 || Deno.version.deno !== DENO_VERSION,
  async fn() {
    const scratch = await Deno.makeTempDir({ prefix: "tome-bundle-test-" });
    try {
      const staged = await stageBundle(scratch, {
        root: ROOT,
        target: "linux-x64",
        deno: Deno.execPath(),
        log: () => {},
      });
      assert.ok(staged.dropped.bytes > 100 * 2 ** 20, "other platforms' libraries left out");
      await runOffline(staged.dir, scratch, (offline as { prefix: string[] }).prefix);
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  },
});

const prebuilt = Deno.env.get("TOME_BUNDLE");
Deno.test({
  name: "bundle: the archive is at most 60 MiB, unpacks, and runs offline",
  ignore: "reason" in offline || !onLinuxX64 || (!prebuilt && Deno.env.get("TOME_BUNDLE_TEST") !== "1"),
  async fn() {
    const scratch = await Deno.makeTempDir({ prefix: "tome-bundle-test-" });
    try {
      let archive = prebuilt;
      if (!archive) {
        // as a user does it: the task (deno install, then the build, with its own permissions)
        const started = performance.now();
        const out = join(scratch, "dist");
        const o = await new Deno.Command(Deno.execPath(), {
          args: ["task", "--quiet", "bundle", "--out", out],
          cwd: ROOT,
          stdout: "piped",
          stderr: "piped",
        }).output();
        assert.ok(o.success, dec.decode(o.stderr));
        archive = join(out, bundleName("linux-x64"));
        const seconds = (performance.now() - started) / 1000;
        console.log(`bundle: ${dec.decode(o.stderr).trim().split("\n").at(-1)} (${seconds.toFixed(0)} s in all)`);
      }
      const bytes = (await Deno.stat(archive)).size;
      assert.ok(bytes <= 60 * 2 ** 20, `${bytes} bytes`);
      const unpacked = join(scratch, "unpacked");
      await Deno.mkdir(unpacked);
      const o = await new Deno.Command("tar", { args: ["-xJf", archive, "-C", unpacked], stderr: "piped" }).output();
      assert.ok(o.success, dec.decode(o.stderr));
      const [top, ...rest] = [...Deno.readDirSync(unpacked)].map((e) => e.name);
      assert.equal(rest.length, 0, "one top folder");
      assert.match(top, /^tome-\d+\.\d+\.\d+$/);
      const dir = join(unpacked, top);
      const version = await new Deno.Command(join(dir, "bin", "deno"), { args: ["--version"] }).output();
      assert.match(dec.decode(version.stdout), new RegExp(`^deno ${DENO_VERSION.replaceAll(".", "\\.")} `));
      await runOffline(dir, scratch, (offline as { prefix: string[] }).prefix);
    } finally {
      await Deno.remove(scratch, { recursive: true });
    }
  },
});
