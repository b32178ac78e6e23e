import assert from "node:assert/strict";
import { compileArgs } from "../cli/compile.ts";
import { ROOT } from "./helpers.ts";

Deno.test("deno task compile embeds only the target's onnxruntime native folder", () => {
  for (const [target, keep] of [["x86_64-unknown-linux-gnu", "linux/x64"], ["aarch64-apple-darwin", "darwin/arm64"]]) {
    const args = compileArgs(ROOT, target);
    const excluded = args.flatMap((a, i) => (args[i - 1] === "--exclude" ? [a] : []));
    assert.ok(excluded.length >= 3, "every other platform is excluded");
    assert.ok(excluded.every((e) => e.includes("onnxruntime-node") && !e.endsWith(keep)), excluded.join("\n"));
    for (const other of ["linux/x64", "linux/arm64", "darwin/arm64", "win32/x64"].filter((p) => p !== keep)) {
      assert.ok(excluded.some((e) => e.endsWith(other)), `${other} excluded for ${target}`);
    }
    assert.ok(args.includes("--v8-flags=--optimize-for-size") && args.includes("--allow-ffi"));
    assert.equal(args.at(-1), "cli/main.ts");
    assert.equal(args[args.indexOf("--target") + 1], target);
  }
});
