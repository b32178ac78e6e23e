import assert from "node:assert/strict";
import { join } from "node:path";
import { EXIT, fsError, TomeError } from "../core/errors.ts";
import { fileHeader, openSource, type Source } from "../core/input/source.ts";
import { decodeUtf8 } from "../core/input/utf8.ts";
import { byteStream, tempDir } from "./helpers.ts";

async function readAll(source: Source): Promise<string> {
  let text = "";
  for await (const s of source.text) text += s;
  return text;
}

async function rejectsWith(p: Promise<unknown>, kind: keyof typeof EXIT, pattern?: RegExp) {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof TomeError, `expected TomeError, got ${err}`);
    assert.equal(err.kind, kind);
    if (pattern) assert.match(err.message, pattern);
    return true;
  });
}

Deno.test("decodeUtf8: invalid sequences are replaced and counted; genuine U+FFFD is not; splits anywhere", async () => {
  const enc = new TextEncoder();
  const parts = [
    enc.encode("a\u00e9b"),
    Uint8Array.of(0xff),
    enc.encode("c\ufffdd"),
    Uint8Array.of(0xe2, 0x82),
    enc.encode("€😀"),
  ];
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) bytes.set(p, (at += p.length) - p.length);
  const expected = new TextDecoder().decode(bytes);
  for (const size of [1, 2, 3, 5, 1000]) {
    const counts = { bytes: 0, replacedChars: 0 };
    let text = "";
    for await (const s of byteStream(bytes, () => size).pipeThrough(decodeUtf8(counts))) text += s;
    assert.equal(text, expected);
    assert.equal(counts.bytes, bytes.length);
    assert.equal(counts.replacedChars, 2, `size ${size}`); // 0xFF and the truncated E2 82
  }
});

Deno.test("openSource: a file streams its text and counts bytes", async () => {
  await using d = await tempDir();
  const path = join(d.path, "a.txt");
  const text = "héllo\n".repeat(50_000);
  await Deno.writeTextFile(path, text);
  const src = await openSource(path);
  assert.equal(src.kind, "file");
  assert.equal(src.totalBytes, new TextEncoder().encode(text).length);
  assert.equal(await readAll(src), text);
  assert.equal(src.stats.bytes, src.totalBytes);
  assert.equal(src.stats.files, 1);
});

Deno.test("openSource: '-' reads stdin; a terminal on stdin is a usage error", async () => {
  const bytes = new TextEncoder().encode("from a pipe\n");
  const src = await openSource("-", { stdin: byteStream(bytes, () => 3) });
  assert.equal(src.label, "stdin");
  assert.equal(src.totalBytes, null);
  assert.equal(await readAll(src), "from a pipe\n");
  await rejectsWith(openSource("-", { stdin: byteStream(bytes, () => 3), stdinIsTerminal: true }), "usage");
  await rejectsWith(openSource("-", { stdin: byteStream(new Uint8Array(0), () => 1) }), "empty");
});

Deno.test("openSource: bad inputs fail with their own error kind", async () => {
  await using d = await tempDir();
  await rejectsWith(openSource(join(d.path, "missing.txt")), "notFound", /not found/);
  const bin = join(d.path, "x.bin");
  await Deno.writeFile(bin, Uint8Array.of(0x7f, 0x45, 0x4c, 0x46, 0, 0, 1));
  await rejectsWith(openSource(bin), "binary", /binary/);
  const empty = join(d.path, "empty.txt");
  await Deno.writeTextFile(empty, "");
  await rejectsWith(openSource(empty), "empty", /empty/);
  const emptyDir = join(d.path, "nothing");
  await Deno.mkdir(emptyDir);
  await rejectsWith(openSource(emptyDir).then(readAll), "noTextFiles");
  await rejectsWith(openSource(join(empty, "below-a-file")), "unreadable");
  assert.equal(fsError(new Deno.errors.PermissionDenied("x"), "p").kind, "unreadable");
  assert.equal(EXIT.binary, 5);
});

Deno.test("openSource: a directory is walked in order, .gitignore honoured, binaries and loops skipped", async () => {
  await using d = await tempDir();
  const w = (rel: string, text: string) => Deno.writeTextFile(join(d.path, rel), text);
  for (const dir of ["src", "src/gen", "docs", ".git", "node_modules"]) {
    await Deno.mkdir(join(d.path, dir), { recursive: true });
  }
  await w(".gitignore", "node_modules/\n*.log\n");
  await w("src/.gitignore", "gen/*\n!gen/keep.ts\n");
  await w("src/main.ts", "console.log(1);");
  await w("src/gen/out.ts", "generated");
  await w("src/gen/keep.ts", "kept");
  await w("docs/readme.md", "# Docs\n");
  await w("debug.log", "noise");
  await w(".git/config", "[core]");
  await w("node_modules/x.js", "dep");
  await Deno.writeFile(join(d.path, "docs/logo.png"), Uint8Array.of(0x89, 0x50, 0, 0));
  await Deno.symlink(d.path, join(d.path, "src/loop"));
  await Deno.symlink(join(d.path, "src/main.ts"), join(d.path, "alias.ts"));

  const src = await openSource(d.path);
  const text = await readAll(src);
  assert.equal(src.kind, "directory");
  const headers = [...text.matchAll(/^==> (.+) <==$/gm)].map((m) => m[1]);
  // alias.ts links to src/main.ts: listed once, under the name met first
  assert.deepEqual(headers, [".gitignore", "alias.ts", "docs/readme.md", "src/.gitignore", "src/gen/keep.ts"]);
  assert.ok(text.startsWith(fileHeader(".gitignore")));
  assert.match(text, /==> src\/gen\/keep.ts <==\nkept/);
  assert.equal(src.stats.files, 5);
  const skipped = src.stats.skipped.map((s) => `${s.rel}:${s.reason}`).sort();
  assert.deepEqual(skipped, ["docs/logo.png:binary", "src/loop:symlink loop"]);
});

Deno.test("decodeUtf8Whole: the same text and counts as the streamed decoder", async () => {
  const { decodeUtf8Whole } = await import("../core/input/utf8.ts");
  const enc = new TextEncoder();
  const cases = [
    new Uint8Array(0),
    enc.encode("plain\n"),
    Uint8Array.of(0xff, 0x41, 0xef, 0xbf, 0xbd, 0xe2, 0x82),
    Uint8Array.of(0xef, 0xbf),
    Uint8Array.of(0xef, 0xbf, 0xbd, 0xef, 0xbf, 0xbd, 0xc3),
  ];
  for (const bytes of cases) {
    const streamed = { bytes: 0, replacedChars: 0 };
    let want = "";
    for await (const s of byteStream(bytes, () => 2).pipeThrough(decodeUtf8(streamed))) want += s;
    const whole = { bytes: 0, replacedChars: 0 };
    assert.equal(decodeUtf8Whole(bytes, whole), want);
    assert.deepEqual(whole, streamed, `${bytes}`);
  }
});

Deno.test("openSource: 3,000 small files and a large one, in order, joined as for streamed files, in seconds", async () => {
  await using d = await tempDir();
  const expected: string[] = [];
  let bytes = 0;
  for (let s = 0; s < 3; s++) {
    await Deno.mkdir(join(d.path, `d${s}`));
    for (let i = 0; i < 1000; i++) {
      const body = i % 7 === 0 ? "" : i % 5 === 0 ? `no newline ${i}` : `file ${s}/${i}\n`;
      await Deno.writeTextFile(join(d.path, `d${s}`, `f${String(i).padStart(4, "0")}.txt`), body);
      expected.push(`d${s}/f${String(i).padStart(4, "0")}.txt`, body);
      bytes += body.length;
    }
  }
  const large = "x".repeat(70_000) + "\n" + "y".repeat(10);
  await Deno.writeTextFile(join(d.path, "z_large.txt"), large);
  expected.push("z_large.txt", large);
  bytes += large.length;
  // the join rule restated: a header after a blank line when the previous file did not end its last line
  let want = "";
  for (let i = 0; i < expected.length; i += 2) {
    if (i > 0) want += want.endsWith("\n") ? "\n" : "\n\n";
    want += `==> ${expected[i]} <==\n` + expected[i + 1];
  }
  const t0 = performance.now();
  const src = await openSource(d.path);
  const text = await readAll(src);
  const seconds = (performance.now() - t0) / 1000;
  assert.equal(text, want);
  assert.equal(src.stats.files, 3001);
  assert.equal(src.stats.bytes, bytes);
  assert.ok(seconds < 10, `${seconds} s for 3,001 files`);
});
