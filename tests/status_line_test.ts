/**
 * The one status-line renderer under `tome tokens` and the live display: the
 * exact bytes it writes on a terminal (redraw in place, cut to the width,
 * cleared at the end), its throttles, and plain lines when piped.
 */
import assert from "node:assert/strict";
import { Display } from "../cli/display.ts";
import { formatSeconds, StatusLine, type StatusMode } from "../cli/progress.ts";
import type { MeterEvent } from "../core/mod.ts";

const ESC = "\x1b";

/** A renderer with a hand-driven clock and its output captured. */
function capture(mode: StatusMode, opts: { plainEvery?: number; columns?: number } = {}) {
  const out: string[] = [];
  let t = 1000;
  const status = new StatusLine(mode, {
    plainEvery: opts.plainEvery,
    write: (s) => out.push(s),
    columns: () => opts.columns ?? 40,
    now: () => t,
  });
  return { status, out, advance: (ms: number) => void (t += ms) };
}

Deno.test("status line on a terminal: one line redrawn in place, throttled, cut to the width, cleared", () => {
  const { status, out, advance } = capture("tty", { columns: 24 });
  status.update(["tokens 1"]);
  assert.deepEqual(out, [`\r${ESC}[2Ktokens 1`]);
  advance(50);
  status.update(["tokens 2"]); // within 100 ms: not drawn
  assert.equal(out.length, 1);
  let computed = false;
  status.update(() => (computed = true, ["never"]));
  assert.equal(computed, false, "lines are computed only when drawn");
  status.update(["tokens 3"], true); // forced
  assert.equal(out[1], `\r${ESC}[2Ktokens 3`);
  advance(100);
  status.update(["x".repeat(30)]);
  assert.equal(out[2], `\r${ESC}[2K${"x".repeat(23)}`, "a line is kept narrower than the terminal");
  advance(100);
  status.update(["y".repeat(24)]);
  assert.equal(out[3], `\r${ESC}[2K${"y".repeat(23)}`, "a line exactly as wide is cut too");
  status.clear();
  assert.equal(out[4], `\r${ESC}[2K`);
  status.clear();
  assert.equal(out.length, 5, "nothing to clear twice");
});

Deno.test("status line on a terminal: two lines move up over the previous two, and clear both", () => {
  const { status, out, advance } = capture("tty");
  status.update(["a1", "b1"]);
  advance(100);
  status.update(["a2", "b2"]);
  status.clear();
  assert.deepEqual(out, [
    `\r${ESC}[2Ka1\n${ESC}[2Kb1`,
    `\r${ESC}[2K${ESC}[1A\r${ESC}[2Ka2\n${ESC}[2Kb2`,
    `\r${ESC}[2K${ESC}[1A\r${ESC}[2K`,
  ]);
});

Deno.test("status line on a terminal: an unknown width falls back to 80 columns, a tiny one to 20", () => {
  for (const [columns, kept] of [[0, 79], [5, 19]]) {
    const { status, out } = capture("tty", { columns });
    status.update(["z".repeat(200)]);
    assert.equal(out[0], `\r${ESC}[2K${"z".repeat(kept)}`);
  }
});

Deno.test("status line piped: a plain `tome:` line at once, then at most every plainEvery ms; none without it", () => {
  const { status, out, advance } = capture("plain", { plainEvery: 5000 });
  status.update(["a", "b"]);
  advance(4999);
  status.update(["c", "d"]);
  advance(1);
  status.update(["e", "f"]);
  status.clear();
  assert.deepEqual(out, ["tome: a · b\n", "tome: e · f\n"]);
  const silent = capture("plain");
  silent.status.update(["a"]);
  silent.status.clear();
  assert.deepEqual(silent.out, []);
  const quiet = capture("quiet", { plainEvery: 1 });
  quiet.status.update(["a"], true);
  quiet.status.clear();
  assert.deepEqual(quiet.out, []);
});

Deno.test("the live display draws its two lines through the status line and clears them before the report", () => {
  const out: string[] = [];
  const d = new Display("tty", { budget: 64, tokenBytes: 1024, totalBytes: 4096 }, (s) => out.push(s), () => 200);
  const chunk: Extract<MeterEvent, { type: "chunk" }> = {
    type: "chunk",
    chunk: 4,
    tokens: 2048,
    bytes: 2048,
    totalBytes: 4096,
    fraction: 0.5,
    kept: 64,
    evicted: 1000,
    kvBytes: 65536,
    kvPeakBytes: 70000,
    kvHighBytes: 65536,
    kvLowBytes: 0,
    kvHighPeakBytes: 70000,
    kvLowPeakBytes: 0,
    footprint: 0.25,
    footprintBytes: 0.25,
    peakFraction: 0.03,
    rssBytes: 1 << 20,
    rssPeakBytes: 1 << 21,
    tokensPerSecond: 100,
    etaSeconds: 20,
    seconds: 20,
  };
  d.event(chunk);
  const [l1, l2] = d.lines(chunk);
  assert.equal(out[0], `\r${ESC}[2K${l1}\n${ESC}[2K${l2}`);
  assert.equal(l1, `reading ▕${"█".repeat(10)}${"░".repeat(10)}▏  50% 2.05K tokens · 100 tok/s · ETA 20s`);
  assert.equal(l2, "KV 64.0 KiB (peak 68.4 KiB) of 64.0 KiB budget · footprint 25% · evicted 1.00K · RSS 1.0 MiB");
  d.clear();
  assert.equal(out[1], `\r${ESC}[2K${ESC}[1A\r${ESC}[2K`);
});

Deno.test("formatSeconds: read back, a duration is its whole seconds (never 1m60s); tenths below ten seconds", () => {
  const back = (t: string) => {
    const m = t.match(/^(?:(\d+)h)?(?:(\d+)m)?(?:([\d.]+)s)?$/)!;
    assert.ok(m, t);
    if (m[3] !== undefined && m[2] !== undefined) assert.ok(Number(m[3]) < 60 && m[3].length === 2, t);
    if (m[1] !== undefined) assert.ok(Number(m[2]) < 60, t);
    return Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3] ?? 0);
  };
  for (let s = 0; s < 7200; s += 0.37) {
    const t = formatSeconds(s);
    if (s < 9.95) assert.equal(back(t), Number(s.toFixed(1)), t);
    else if (Math.round(s) < 3600) assert.equal(back(t), Math.round(s), `${s} → ${t}`);
    else assert.equal(back(t), Math.floor(Math.round(s) / 60) * 60, `${s} → ${t}`);
  }
  assert.equal(formatSeconds(119.7), "2m00s");
  assert.equal(formatSeconds(59.7), "1m00s");
  assert.equal(formatSeconds(Infinity), "?");
});
