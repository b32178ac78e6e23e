/**
 * `deno task compile`: a standalone `tome` binary for one target, embedding
 * only that target's onnxruntime native libraries.
 *
 *   deno task compile                       # linux-x64 → dist/tome-x86_64-unknown-linux-gnu
 *   deno task compile --target aarch64-apple-darwin
 *   deno task compile --dry-run             # print the deno compile command, run nothing
 *
 * onnxruntime-node ships native folders for every platform under
 * bin/napi-v6/<os>/<arch> (linux x64/arm64, darwin arm64, win32 x64/arm64 with
 * DirectML): every folder but the target's is passed to --exclude. deno compile
 * downloads the Deno runtime (denort) for the target, so it needs internet.
 */
import { createRequire } from "node:module";
import { dirname, join, relative } from "node:path";
import { parseArgs } from "node:util";

const TARGETS: Record<string, [string, string]> = {
  "x86_64-unknown-linux-gnu": ["linux", "x64"],
  "aarch64-unknown-linux-gnu": ["linux", "arm64"],
  "aarch64-apple-darwin": ["darwin", "arm64"],
  "x86_64-pc-windows-msvc": ["win32", "x64"],
};
const PERMISSIONS = ["--allow-read", "--allow-write", "--allow-env", "--allow-ffi", "--allow-sys"];

/** The deno compile arguments for a target, relative to the project root. */
export function compileArgs(root: string, target: string): string[] {
  const platform = TARGETS[target];
  if (!platform) throw new Error(`unknown target ${target} (one of: ${Object.keys(TARGETS).join(", ")})`);
  const ortMain = createRequire(join(root, "cli", "compile.ts")).resolve("onnxruntime-node");
  const bin = join(dirname(ortMain), "..", "bin", "napi-v6");
  const excludes: string[] = [];
  for (const os of Deno.readDirSync(bin)) {
    for (const arch of Deno.readDirSync(join(bin, os.name))) {
      if (os.name !== platform[0] || arch.name !== platform[1]) {
        excludes.push(relative(root, join(bin, os.name, arch.name)));
      }
    }
  }
  const ext = target.includes("windows") ? ".exe" : "";
  return [
    "compile",
    "--v8-flags=--optimize-for-size",
    ...PERMISSIONS,
    "--target",
    target,
    ...excludes.sort().flatMap((e) => ["--exclude", e]),
    "--output",
    join("dist", `tome-${target}${ext}`),
    join("cli", "main.ts"),
  ];
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { target: { type: "string", default: "x86_64-unknown-linux-gnu" }, "dry-run": { type: "boolean" } },
  });
  const root = join(import.meta.dirname!, "..");
  const args = compileArgs(root, values.target!);
  if (values["dry-run"]) {
    console.log(["deno", ...args].join(" "));
    Deno.exit(0);
  }
  console.error(`tome compile: deno ${args.join(" ")}`);
  const out = await new Deno.Command(Deno.execPath(), { args, cwd: root, stdout: "inherit", stderr: "inherit" })
    .output();
  if (!out.success) {
    console.error(
      "tome compile: deno compile failed; it downloads the Deno runtime (denort) for the target, so it needs internet access",
    );
    Deno.exit(out.code || 1);
  }
}
