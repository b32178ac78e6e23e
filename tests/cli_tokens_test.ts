import assert from "node:assert/strict";
import { join } from "node:path";
import denoJson from "../deno.json" with { type: "json" };
import { EXIT } from "../core/errors.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { mixedText } from "./fixture_text.ts";
import { type CliResult, hasShared, SMOLLM2_TOKENIZER, tempDir, tome } from "./helpers.ts";

/** Bad input must give exactly one line on stderr, no stack trace, and the documented code. */
function assertOneLineError(r: CliResult, code: number, pattern: RegExp) {
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.equal(r.stdout, "");
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, `one line on stderr, got: ${r.stderr}`);
  assert.match(lines[0], /^tome: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
}

Deno.test("tome --help lists the subcommands; --version prints the version", async () => {
  const help = await tome(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^\s+tokens \[options\] <input>/m);
  const version = await tome(["--version"]);
  assert.equal(version.code, 0);
  assert.equal(version.stdout.trim(), denoJson.version);
});

Deno.test({
  name: "tome tokens: file, stdin and --json agree with whole-text tokenization",
  ignore: !hasShared,
  async fn() {
    await using d = await tempDir();
    const text = mixedText(11, 50_000);
    const path = join(d.path, "doc.txt");
    await Deno.writeTextFile(path, text);
    const expected = (await loadTokenizer(SMOLLM2_TOKENIZER)).encode(text).length;

    const plain = await tome(["tokens", path, "--tokenizer", SMOLLM2_TOKENIZER]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.equal(plain.stdout, `${expected}\n`);
    assert.equal(plain.stderr, "", "no progress line when stderr is not a terminal");

    const piped = await tome(["tokens", "-", "-t", SMOLLM2_TOKENIZER], { stdin: text });
    assert.equal(piped.stdout, `${expected}\n`);

    const viaEnv = await tome(["tokens", path, "--json"], { env: { TOME_MODEL: SMOLLM2_TOKENIZER } });
    const json = JSON.parse(viaEnv.stdout);
    assert.deepEqual(Object.keys(json).sort(), [
      "bytes",
      "files",
      "peak_rss_bytes",
      "replaced_chars",
      "seconds",
      "tokens",
    ]);
    assert.equal(json.tokens, expected);
    assert.equal(json.bytes, new TextEncoder().encode(text).length);
    assert.equal(json.replaced_chars, 0);
    assert.equal(json.files, 1);
    assert.ok(json.seconds > 0 && json.peak_rss_bytes > 0);
  },
});

Deno.test({
  name: "tome tokens: bad input gets one line on stderr and its own exit code",
  ignore: !hasShared,
  async fn() {
    await using d = await tempDir();
    const t = ["-t", SMOLLM2_TOKENIZER];
    assertOneLineError(await tome(["tokens", join(d.path, "nope.txt"), ...t]), EXIT.notFound, /not found/);
    await Deno.writeFile(join(d.path, "a.bin"), Uint8Array.of(1, 0, 2));
    assertOneLineError(await tome(["tokens", join(d.path, "a.bin"), ...t]), EXIT.binary, /binary/);
    await Deno.writeTextFile(join(d.path, "empty.txt"), "");
    assertOneLineError(await tome(["tokens", join(d.path, "empty.txt"), ...t]), EXIT.empty, /empty/);
    assertOneLineError(await tome(["tokens", "-", ...t], { stdin: "" }), EXIT.empty, /empty/);
    await Deno.mkdir(join(d.path, "bins"));
    await Deno.writeFile(join(d.path, "bins", "x.o"), Uint8Array.of(0, 0));
    assertOneLineError(await tome(["tokens", join(d.path, "bins"), ...t]), EXIT.noTextFiles, /no readable text files/);
    assertOneLineError(await tome(["tokens", join(d.path, "empty.txt", "x"), ...t]), EXIT.unreadable, /cannot read/);
    assertOneLineError(await tome(["tokens", "deno.json", "-t", d.path]), EXIT.tokenizerMissing, /no tokenizer.json/);
    await Deno.mkdir(join(d.path, "corrupt"));
    await Deno.writeTextFile(join(d.path, "corrupt", "tokenizer.json"), '{"model": ');
    assertOneLineError(
      await tome(["tokens", "deno.json", "-t", join(d.path, "corrupt")]),
      EXIT.tokenizerInvalid,
      /not valid JSON/,
    );
    await Deno.writeTextFile(join(d.path, "corrupt", "tokenizer.json"), '{"model": {"type": "Nope"}}');
    assertOneLineError(
      await tome(["tokens", "deno.json", "-t", join(d.path, "corrupt")]),
      EXIT.tokenizerInvalid,
      /not a usable tokenizer/,
    );
    assertOneLineError(await tome(["tokens", "deno.json"], { env: { TOME_MODEL: "" } }), EXIT.usage, /--tokenizer/);
    assertOneLineError(await tome(["tokens", "--bogus"]), EXIT.usage, /unknown option/);
    assertOneLineError(await tome(["frobnicate"]), EXIT.usage, /unknown command/);
  },
});

const hasScript = (() => {
  try {
    return new Deno.Command("script", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync().success;
  } catch {
    return false;
  }
})();

Deno.test({
  name: "tome tokens: a progress line is redrawn on a terminal and cleared at the end",
  ignore: !hasShared || !hasScript,
  async fn() {
    await using d = await tempDir();
    const path = join(d.path, "doc.txt");
    await Deno.writeTextFile(path, mixedText(3, 300_000));
    const deno = Deno.execPath();
    const cmd = `${deno} run --quiet -A cli/main.ts tokens ${path} -t ${SMOLLM2_TOKENIZER}`;
    // script(1) gives the command a real pseudo-terminal for stdin/stdout/stderr.
    const out = await new Deno.Command("script", {
      args: ["-qec", cmd, "/dev/null"],
      cwd: join(import.meta.dirname!, ".."),
      stdin: "null",
      stdout: "piped",
      env: { NO_COLOR: "1", COLUMNS: "100" },
    }).output();
    const screen = new TextDecoder().decode(out.stdout).replaceAll("\x1b", "<ESC>");
    assert.equal(out.code, 0, screen);
    assert.match(screen, /\r<ESC>\[2Ktokens [\d.]+K · [\d.]+ KiB \/ [\d.]+ KiB \d+% · /);
    // the line is cleared before the count is printed
    assert.match(screen, /\r<ESC>\[2K\d+\r?\n/);
  },
});
