/**
 * `deno task bundle`: an offline install of tome for one target, as one
 * `dist/tome-<version>-<target>.tar.xz`.
 *
 *   deno task bundle                         # linux-x64 → dist/tome-0.1.0-linux-x64.tar.xz
 *   deno task bundle --out /tmp/dist
 *   deno task bundle --deno ~/.deno/bin/deno  # ship this Deno 2.9.6 binary, download nothing
 *
 * The archive holds one folder `tome-<version>/`: the Deno binary for the
 * target (npm `@deno/linux-x64-glibc` at the pinned version, its sha512
 * checked), the project (cli, core, kernels, recipes, deno.json, deno.lock,
 * README.md), node_modules without what the target cannot use (other
 * platforms' onnxruntime libraries, musl builds, protobufjs's CLI, source
 * maps), and a `tome` launcher that runs cli/main.ts with `--cached-only`.
 *
 * Files are dropped, package folders kept: Deno reinstalls (downloads) a
 * package whose folder or `node_modules/.deno/<pkg>/.initialized` marker is
 * missing, which an offline machine cannot. Needs `tar` and `xz`; fetches the
 * Deno package once (cached under `<out>/.cache`).
 */
import { basename, dirname, join, relative } from "node:path";
import { parseArgs } from "node:util";
import denoJson from "../deno.json" with { type: "json" };

/** The Deno release the bundle ships (the one the project is developed and tested with). */
export const DENO_VERSION = "2.9.6";

/** A platform the bundle can be built for. */
export interface BundleTarget {
  /** npm package with the Deno binary. */
  denoPackage: string;
  /** Its tarball's sha512 (npm `integrity`), at {@link DENO_VERSION}. */
  integrity: string;
  /** onnxruntime-node's native folder bin/napi-v6/<os>/<arch>. */
  ortOs: string;
  ortArch: string;
}

/**
 * Targets: linux-x64 only — node_modules carries the native packages of the
 * machine that ran `deno install`, so a bundle is built on its own platform.
 */
export const BUNDLE_TARGETS: Record<string, BundleTarget> = {
  "linux-x64": {
    denoPackage: "@deno/linux-x64-glibc",
    integrity: "sha512-3md4TKLCuzsLDmfOoC5KN7NAZaxSVkMgm64vg6foD00JBADCpYS2/5QqXfzgnP5ZQz3iLP9vBQJtEgc116OAoQ==",
    ortOs: "linux",
    ortArch: "x64",
  },
};

/** What of the project goes into the bundle (besides node_modules). */
export const PROJECT_ENTRIES = ["cli", "core", "kernels", "recipes", "deno.json", "deno.lock", "README.md"];

/** Permissions tome runs with (as `deno task tome`). */
export const PERMISSIONS = ["--allow-read", "--allow-write", "--allow-env", "--allow-ffi", "--allow-sys"];

const ORT_NATIVE = /(?:^|\/)onnxruntime-node\/bin\/napi-v6\/([^/]+)\/([^/]+)\//;

/**
 * Whether a file under node_modules (path relative to it, `/`-separated) goes
 * into the bundle for `target`. Only files are judged: every folder is kept.
 */
export function keepModuleFile(rel: string, target: BundleTarget): boolean {
  const ort = ORT_NATIVE.exec(rel);
  if (ort) return ort[1] === target.ortOs && ort[2] === target.ortArch;
  // protobufjs's code generator (pbjs/pbts) with its own dependencies: never imported at run time
  if (/(?:^|\/)protobufjs\/cli\//.test(rel)) return false;
  // the bundled Deno is a glibc build: musl native addons cannot load in it
  if (/(?:^|\/)[^/]+-musl\/[^/]+\.node$/.test(rel)) return false;
  if (rel.endsWith(".map")) return false;
  return true;
}

/** The `tome` launcher: the bundled Deno, the bundled node_modules, no registry access. */
export function launcherScript(): string {
  return `#!/bin/sh
# tome, offline: the bundled Deno runs cli/main.ts with the bundled node_modules
# (--cached-only: nothing is downloaded). Deno's own cache (transpiled sources)
# lives in .deno beside this script, or in a temporary folder when this folder
# is read-only; TOME_DENO_DIR overrides it.
set -e
self=$(readlink -f -- "$0" 2>/dev/null || printf '%s' "$0")
here=$(CDPATH= cd -- "$(dirname -- "$self")" && pwd)
if [ -z "\${TOME_DENO_DIR:-}" ]; then
  if [ -w "$here" ]; then TOME_DENO_DIR="$here/.deno"; else TOME_DENO_DIR="\${TMPDIR:-/tmp}/tome-deno-$(id -u)"; fi
fi
export DENO_DIR="$TOME_DENO_DIR"
export DENO_NO_UPDATE_CHECK=1
export DENO_NO_PROMPT=1
exec "$here/bin/deno" run --quiet --cached-only --config "$here/deno.json" --node-modules-dir=auto \\
  --v8-flags=--optimize-for-size ${PERMISSIONS.join(" ")} "$here/cli/main.ts" "$@"
`;
}

/** An error the bundler explains in one line. */
export class BundleError extends Error {}

/** The bundle's file name for a target. */
export function bundleName(target: string, version = denoJson.version): string {
  return `tome-${version}-${target}.tar.xz`;
}

export interface StageOptions {
  /** The project root (with node_modules installed). */
  root: string;
  target: string;
  /** A Deno binary to ship instead of the npm package's (it must be Deno {@link DENO_VERSION}). */
  deno?: string;
  /** Where the npm package is cached (default `<root>/dist/.cache`). */
  cache?: string;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

export interface StageResult {
  /** The unpacked bundle folder, `tome-<version>`. */
  dir: string;
  bytes: number;
  /** node_modules files left out, and their bytes. */
  dropped: { files: number; bytes: number };
}

const defaultLog = (l: string) => console.error(`tome bundle: ${l}`);

/** Writes the unpacked bundle `tome-<version>/` into `parent`. */
export async function stageBundle(parent: string, opts: StageOptions): Promise<StageResult> {
  const log = opts.log ?? defaultLog;
  const target = BUNDLE_TARGETS[opts.target];
  if (!target) {
    throw new BundleError(`unknown target ${opts.target} (one of: ${Object.keys(BUNDLE_TARGETS).join(", ")})`);
  }
  const ortFolder = join(opts.root, "node_modules", "onnxruntime-node", "bin", "napi-v6", target.ortOs, target.ortArch);
  if (!(await exists(ortFolder))) {
    throw new BundleError(`node_modules lacks ${relative(opts.root, ortFolder)}: run \`deno install\` first`);
  }
  const top = join(parent, `tome-${denoJson.version}`);
  await Deno.mkdir(join(top, "bin"), { recursive: true });
  const deno = join(top, "bin", "deno");
  if (opts.deno) {
    await checkDeno(opts.deno);
    await Deno.copyFile(opts.deno, deno);
  } else {
    const cache = opts.cache ?? join(opts.root, "dist", ".cache");
    await Deno.mkdir(cache, { recursive: true });
    const tgz = await denoPackage(target, cache, log);
    await run("tar", ["-xzf", tgz, "-C", top, "package/deno"], "tar (Debian: apt-get install tar)");
    await Deno.rename(join(top, "package", "deno"), deno);
    await Deno.remove(join(top, "package"), { recursive: true });
  }
  await Deno.chmod(deno, 0o755);
  for (const entry of PROJECT_ENTRIES) await copyTree(join(opts.root, entry), join(top, entry), () => true);
  const dropped = { files: 0, bytes: 0 };
  const modules = join(opts.root, "node_modules");
  // Deno's own state files in node_modules/.deno (setup cache, lock) are copied: Deno may rewrite them in the bundle
  const denoState = join(modules, ".deno");
  await copyTree(modules, join(top, "node_modules"), (src, size) => {
    if (keepModuleFile(relative(modules, src).replaceAll("\\", "/"), target)) return true;
    dropped.files++;
    dropped.bytes += size;
    return false;
  }, (src) => dirname(src) !== denoState);
  await Deno.writeTextFile(join(top, "tome"), launcherScript());
  await Deno.chmod(join(top, "tome"), 0o755);
  return { dir: top, bytes: await treeBytes(top), dropped };
}

export interface BundleOptions extends StageOptions {
  /** Output folder (default `<root>/dist`). */
  out?: string;
}

export interface BundleResult extends StageResult {
  /** The archive. */
  path: string;
  /** Its size; {@link StageResult.bytes} is the unpacked size. */
  archiveBytes: number;
  seconds: number;
}

/** Builds the bundle archive; returns where it is and how big. */
export async function buildBundle(opts: BundleOptions): Promise<BundleResult> {
  const started = performance.now();
  const log = opts.log ?? defaultLog;
  const tar = await tool("tar", "tar (Debian: apt-get install tar)");
  await tool("xz", "xz (Debian: apt-get install xz-utils)");
  const out = opts.out ?? join(opts.root, "dist");
  await Deno.mkdir(out, { recursive: true });
  const staging = await Deno.makeTempDir({ dir: out, prefix: ".bundle-" });
  try {
    const staged = await stageBundle(staging, { cache: join(out, ".cache"), ...opts, log });
    log(`packing ${(staged.bytes / 2 ** 20).toFixed(1)} MiB with xz -9 (about 2 minutes on 2 idle cores)`);
    const path = join(out, bundleName(opts.target));
    await tarXz(tar, staging, basename(staged.dir), `${path}.partial`);
    await Deno.rename(`${path}.partial`, path);
    const archiveBytes = (await Deno.stat(path)).size;
    return { ...staged, path, archiveBytes, seconds: (performance.now() - started) / 1000 };
  } finally {
    await Deno.remove(staging, { recursive: true }).catch(() => {});
  }
}

/** Checks that a binary given with --deno is the pinned Deno. */
async function checkDeno(path: string): Promise<void> {
  let out = "";
  try {
    const o = await new Deno.Command(path, { args: ["--version"], stdout: "piped", stderr: "null" }).output();
    out = new TextDecoder().decode(o.stdout);
  } catch (err) {
    throw new BundleError(`--deno ${path}: cannot run it: ${err instanceof Error ? err.message : err}`);
  }
  if (!out.startsWith(`deno ${DENO_VERSION} `)) {
    throw new BundleError(`--deno ${path}: expected Deno ${DENO_VERSION}, got ${out.split("\n")[0] || "no version"}`);
  }
}

/** Checks that a system tool runs; says how to get it when it does not. */
async function tool(name: string, hint: string): Promise<{ name: string; gnu: boolean }> {
  try {
    const o = await new Deno.Command(name, { args: ["--version"], stdout: "piped", stderr: "null" }).output();
    return { name, gnu: /GNU tar/.test(new TextDecoder().decode(o.stdout)) };
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new BundleError(`\`${name}\` not found on PATH: install ${hint}`);
    throw err;
  }
}

async function run(cmd: string, args: string[], hint: string): Promise<void> {
  let o: Deno.CommandOutput;
  try {
    o = await new Deno.Command(cmd, { args, stdout: "null", stderr: "piped" }).output();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new BundleError(`\`${cmd}\` not found on PATH: install ${hint}`);
    throw err;
  }
  if (!o.success) {
    const msg = new TextDecoder().decode(o.stderr).trim().split("\n")[0];
    throw new BundleError(`${cmd} ${args.join(" ")} failed: ${msg}`);
  }
}

const exists = (p: string) => Deno.lstat(p).then(() => true, () => false);

/** The Deno npm tarball, from the cache folder or the registry, its integrity checked either way. */
async function denoPackage(t: BundleTarget, cache: string, log: (l: string) => void): Promise<string> {
  const base = t.denoPackage.split("/").pop()!;
  const file = join(cache, `${base}-${DENO_VERSION}.tgz`);
  if (await exists(file)) {
    if (await integrityOf(await Deno.readFile(file)) === t.integrity) return file;
    await Deno.remove(file);
  }
  const registry = (await npmRegistry()).replace(/\/$/, "");
  const url = `${registry}/${t.denoPackage}/-/${base}-${DENO_VERSION}.tgz`;
  log(`fetching ${url}`);
  let bytes: Uint8Array;
  try {
    const res = await fetch(url);
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    bytes = new Uint8Array(await res.arrayBuffer());
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new BundleError(`cannot fetch the Deno binary ${t.denoPackage}@${DENO_VERSION} from ${url}: ${msg}`);
  }
  const got = await integrityOf(bytes);
  if (got !== t.integrity) {
    throw new BundleError(`${url}: integrity ${got} does not match the pinned ${t.integrity}`);
  }
  await Deno.writeFile(`${file}.partial`, bytes);
  await Deno.rename(`${file}.partial`, file);
  return file;
}

/** The npm registry the machine is set up for: `$NPM_CONFIG_REGISTRY`, else what `npm config get registry` says. */
async function npmRegistry(): Promise<string> {
  const env = Deno.env.get("NPM_CONFIG_REGISTRY");
  if (env) return env;
  try {
    const out = await new Deno.Command("npm", { args: ["config", "get", "registry"], stdout: "piped", stderr: "null" })
      .output();
    const url = new TextDecoder().decode(out.stdout).trim();
    if (out.success && /^https?:\/\//.test(url)) return url;
  } catch {
    // no npm: fall through
  }
  throw new BundleError("no npm registry: set NPM_CONFIG_REGISTRY, or install npm (npm config get registry)");
}

/** npm's integrity string (sha512, base64) of some bytes. */
export async function integrityOf(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-512", bytes as Uint8Array<ArrayBuffer>));
  let bin = "";
  for (const b of digest) bin += String.fromCharCode(b);
  return `sha512-${btoa(bin)}`;
}

/**
 * Copies a file or a folder tree: symlinks as symlinks, folders always, files
 * when `keep` says so. Files are hard-linked where possible when `link` says
 * so (package files Deno only reads), else copied.
 */
async function copyTree(
  src: string,
  dst: string,
  keep: (src: string, size: number) => boolean,
  link: (src: string) => boolean = () => false,
): Promise<void> {
  const st = await Deno.lstat(src);
  if (st.isSymlink) return await Deno.symlink(await Deno.readLink(src), dst);
  if (st.isDirectory) {
    await Deno.mkdir(dst, { recursive: true });
    for await (const e of Deno.readDir(src)) await copyTree(join(src, e.name), join(dst, e.name), keep, link);
    return;
  }
  if (!keep(src, st.size)) return;
  if (link(src)) {
    try {
      return await Deno.link(src, dst);
    } catch {
      // another file system: copy
    }
  }
  await Deno.copyFile(src, dst);
}

async function treeBytes(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) n += await treeBytes(p);
    else if (e.isFile) n += (await Deno.stat(p)).size;
  }
  return n;
}

/** `tar -C dir -c name | xz -9 -T0 > path`, failing when either fails. */
async function tarXz(tar: { name: string; gnu: boolean }, dir: string, name: string, path: string): Promise<void> {
  const reproducible = tar.gnu ? ["--sort=name", "--owner=0", "--group=0", "--numeric-owner"] : [];
  const t = new Deno.Command(tar.name, {
    args: ["-C", dir, ...reproducible, "-cf", "-", name],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  const x = new Deno.Command("xz", { args: ["-9", "-T0", "-c"], stdin: "piped", stdout: "piped", stderr: "piped" })
    .spawn();
  const [tarOut, xzOut] = await Promise.all([
    t.stdout.pipeTo(x.stdin).then(() => t.output()),
    x.stdout.pipeTo(file.writable).then(() => x.output()),
  ]);
  for (const [what, o] of [["tar", tarOut], ["xz", xzOut]] as const) {
    if (!o.success) {
      throw new BundleError(`${what} failed: ${new TextDecoder().decode(o.stderr).trim().split("\n")[0]}`);
    }
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { target: { type: "string", default: "linux-x64" }, out: { type: "string" }, deno: { type: "string" } },
  });
  const root = dirname(import.meta.dirname!);
  try {
    const r = await buildBundle({ root, target: values.target!, out: values.out, deno: values.deno });
    const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
    console.error(
      `tome bundle: wrote ${r.path}: ${mib(r.archiveBytes)} (${mib(r.bytes)} unpacked; ` +
        `${r.dropped.files} node_modules files, ${mib(r.dropped.bytes)}, left out) in ${r.seconds.toFixed(0)} s`,
    );
  } catch (err) {
    if (!(err instanceof BundleError)) throw err;
    console.error(`tome bundle: ${err.message}`);
    Deno.exit(1);
  }
}
