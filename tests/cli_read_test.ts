/**
 * ask, summarize and code as a user runs them: on a make-model checkpoint, from
 * a file, a directory and stdin, with --json checked against a schema, the live
 * display under a real pseudo-terminal, plain lines when piped, Ctrl-C, a closed
 * stdout, and bad input.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { Ajv } from "ajv";
import schema from "./schemas/answer.schema.json" with { type: "json" };
import estimateSchema from "./schemas/estimate.schema.json" with { type: "json" };
import { EXIT } from "../core/errors.ts";
import { loadTokenizer } from "../core/tokens/tokenizer.ts";
import { mixedText } from "./fixture_text.ts";
import { hasShared, ROOT, SMOLLM2_TOKENIZER, tome } from "./helpers.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-cli-read-" });
const env = { TOME_CACHE: join(root, "cache"), TOME_MODEL: "" };
const tokenizerDir = hasShared ? SMOLLM2_TOKENIZER : await writeTestTokenizer(join(root, "tok"));
const model = join(root, "tiny");
const made = await tome(["make-model", "tiny", "--out", model, "--tokenizer", tokenizerDir, "--arch", "qwen2"], {
  env,
});
if (made.code !== 0) throw new Error(made.stderr);
const doc = join(root, "doc.txt");
const text = mixedText(31, 40_000) + "\nThe pass code of Natasha is 48213.\n" + mixedText(32, 20_000);
await Deno.writeTextFile(doc, text);
const ajv = new Ajv({ allErrors: true });
const validate = ajv.compile(schema);
const validateEstimate = ajv.compile(estimateSchema);
const base = ["-m", model, "--max-tokens", "16"];

Deno.test("tome ask: the answer on stdout, the report on stderr; stdin gives the same answer", async () => {
  const r = await tome(["ask", "What is the pass code of Natasha?", doc, ...base], { env });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(r.stdout.trim().length > 0);
  assert.match(r.stderr, /^tome: KV peak\s+\S+ \S+\s+\S+ \S+ \(/m);
  assert.match(
    r.stderr,
    /^tome: reading .* tokens · .* tok\/s/m,
    "a plain progress line when stderr is not a terminal",
  );
  const piped = await tome(["ask", "What is the pass code of Natasha?", "-", ...base], { env, stdin: text });
  assert.equal(piped.code, 0, piped.stderr);
  assert.equal(piped.stdout, r.stdout);
  const quiet = await tome(["ask", "What is the pass code of Natasha?", doc, ...base, "--quiet"], { env });
  assert.equal(quiet.stderr, "");
  assert.equal(quiet.stdout, r.stdout);
});

Deno.test("tome ask --json: one object that validates against the schema, with the figures of the run", async () => {
  const r = await tome([
    "ask",
    "What is the pass code of Natasha?",
    doc,
    ...base,
    "--json",
    "--budget",
    "256",
    "--chunk",
    "128",
  ], { env });
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  const valid: boolean = validate(j);
  assert.ok(valid, JSON.stringify(validate.errors));
  const tok = await loadTokenizer(model);
  assert.equal(j.tokens_read, tok.encode(text).length);
  assert.equal(j.budget, 256);
  assert.equal(j.policy, "snapkv");
  assert.equal(j.positions, "compact"); // 60 KB cannot be guaranteed to fit 8192 positions
  assert.equal(j.kv_dtype, "f16");
  assert.ok(j.kv_peak_bytes < j.kv_full_bytes / 10);
  assert.equal(j.generated_tokens, j.finish_reason === "length" ? 16 : j.generated_tokens);
  const plain = await tome([
    "ask",
    "What is the pass code of Natasha?",
    doc,
    ...base,
    "--budget",
    "256",
    "--chunk",
    "128",
  ], { env });
  assert.equal(plain.stdout, j.answer + (j.answer.endsWith("\n") ? "" : "\n"));
});

Deno.test("tome summarize and tome code run; code sees the file headers; --metrics writes NDJSON events", async () => {
  const s = await tome(["summarize", doc, ...base, "--style", "bullets", "--words", "50", "--json"], { env });
  assert.equal(s.code, 0, s.stderr);
  assert.equal(JSON.parse(s.stdout).recipe, "summarize");
  const sPiped = await tome(["summarize", "-", ...base, "--style", "bullets", "--words", "50", "--json"], {
    env,
    stdin: text,
  });
  assert.equal(JSON.parse(sPiped.stdout).answer, JSON.parse(s.stdout).answer);
  const src = join(root, "src");
  await Deno.mkdir(join(src, "lib"), { recursive: true });
  await Deno.writeTextFile(join(src, "main.ts"), "import { run } from './lib/run.ts';\nrun();\n");
  await Deno.writeTextFile(join(src, "lib", "run.ts"), "export function run() { console.log('hi'); }\n");
  const metrics = join(root, "events.ndjson");
  const c = await tome(["code", src, "where is run defined?", ...base, "--json", "--metrics", metrics], { env });
  assert.equal(c.code, 0, c.stderr);
  const j = JSON.parse(c.stdout);
  const valid: boolean = validate(j);
  assert.ok(valid, JSON.stringify(validate.errors));
  assert.equal(j.input.files, 2);
  const events = (await Deno.readTextFile(metrics)).trim().split("\n").map((l) => JSON.parse(l));
  assert.ok(events.some((e) => e.type === "chunk") && events.some((e) => e.type === "token"));
  assert.equal(events.filter((e) => e.type === "token").length, j.generated_tokens - 1); // the last token is not fed back
});

Deno.test("tome estimate: exact token count and peak KV of the real run, without reading it through the model", async () => {
  const q = "What is the pass code of Natasha?";
  const args = ["-m", model, "--max-tokens", "6", "--budget", "200", "--chunk", "96"];
  const e = await tome(["estimate", doc, ...args, "--question", q, "--json"], { env });
  assert.equal(e.code, 0, e.stderr);
  const est = JSON.parse(e.stdout);
  const valid: boolean = validateEstimate(est);
  assert.ok(valid, JSON.stringify(validateEstimate.errors));
  const run = JSON.parse((await tome(["ask", q, doc, ...args, "--json"], { env })).stdout);
  assert.equal(est.tokens, run.tokens_read);
  assert.equal(est.predicted.kv_peak_bytes, run.kv_peak_bytes);
  assert.equal(est.predicted.kv_full_bytes, run.kv_full_bytes);
  assert.ok(est.predicted.peak_rss_bytes > 0 && est.predicted.seconds.total > 0);
  const piped = JSON.parse(
    (await tome(["estimate", "-", ...args, "--question", q, "--json"], { env, stdin: text })).stdout,
  );
  assert.equal(piped.predicted.kv_peak_bytes, est.predicted.kv_peak_bytes);
  const plain = await tome(["estimate", doc, ...args], { env });
  assert.match(plain.stdout, /^KV peak\s+[\d.]+ \w+ \(\d+ bytes; reading/m);
  // with q8 weights and no --chunk, the run reads in chunks of 256 (512 with f32)
  const quick = ["-m", model, "--max-tokens", "2", "--budget", "200", "--json"];
  for (const [weights, chunk] of [["q8", 256], ["f32", 512]] as const) {
    const r = await tome(["estimate", doc, ...quick, "--weights", weights], { env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).chunk, chunk, weights);
  }
});

Deno.test("tome ask under a real terminal: two redrawn lines, cleared before the answer", async () => {
  const deno = Deno.execPath();
  const cmd = [
    deno,
    "run",
    "--quiet",
    "-A",
    join(ROOT, "cli/main.ts"),
    "ask",
    "'What is it?'",
    doc,
    ...base,
    "--chunk",
    "64",
  ].join(" ");
  const out = await new Deno.Command("script", {
    args: ["-qec", cmd, "/dev/null"],
    stdin: "null",
    stdout: "piped",
    env: { ...env, COLUMNS: "120", NO_COLOR: "1" },
  }).output();
  const screen = new TextDecoder().decode(out.stdout).replaceAll("\x1b", "<ESC>");
  assert.equal(out.code, 0, screen);
  assert.match(screen, /<ESC>\[2Kreading ▕[█░]+▏ +\d+% [\d.]+K? tokens · [\d.]+K? tok\/s/);
  assert.match(
    screen,
    /\r?\n<ESC>\[2KKV [\d.]+ \w+ \(peak [\d.]+ \w+\) of [\d.]+ \w+ budget · footprint [\d.]+% · evicted/,
  );
  // redraws move up one line, and the lines are cleared before the answer and the report
  assert.match(screen, /<ESC>\[1A/);
  assert.match(screen, /\r<ESC>\[2K<ESC>\[1A\r<ESC>\[2K[^\r]*\r?\ntome: read /);
});

Deno.test("Ctrl-C stops within a second with exit 130 and a partial report; a closed stdout ends quietly", async () => {
  const big = join(root, "big.txt");
  await Deno.writeTextFile(big, mixedText(5, 2_000_000));
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "-A", join(ROOT, "cli/main.ts"), "ask", "q?", big, ...base, "--chunk", "64"],
    env,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let err = "";
  while (!err.includes("tome: reading")) {
    const { value, done } = await reader.read();
    if (done) break;
    err += value;
  }
  const t0 = performance.now();
  child.kill("SIGINT");
  for (let r = await reader.read(); !r.done; r = await reader.read()) err += r.value;
  const status = await child.status;
  assert.ok(performance.now() - t0 < 1000, "stopped within a second");
  assert.equal(status.code, EXIT.interrupted, err);
  assert.match(err, /tome: interrupted: read [\d.]+K? document tokens/);

  // the reader of stdout is gone before anything is written: no error, exit 0
  const closed = new Deno.Command(Deno.execPath(), {
    args: ["run", "--quiet", "-A", join(ROOT, "cli/main.ts"), "ask", "q?", doc, ...base, "--quiet"],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  await closed.stdout.cancel();
  const done = await closed.output();
  assert.equal(done.code, 0, new TextDecoder().decode(done.stderr));
  assert.equal(new TextDecoder().decode(done.stderr), "");
});

Deno.test("reading commands: bad input gets one line on stderr and its exit code", async () => {
  const oneLine = (r: { code: number; stderr: string; stdout: string }, code: number, pattern: RegExp) => {
    assert.equal(r.code, code, r.stderr);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, pattern);
  };
  oneLine(await tome(["ask", "q", doc], { env }), EXIT.usage, /no model: give --model/);
  oneLine(await tome(["ask", "q", join(root, "nope.txt"), "-m", model], { env }), EXIT.notFound, /input not found/);
  oneLine(await tome(["ask", "q", doc, "-m", model, "--budget", "lots"], { env }), EXIT.usage, /budget "lots"/);
  oneLine(await tome(["ask", "q", doc, "-m", model, "--policy", "nope"], { env }), EXIT.usage, /--policy/);
  oneLine(
    await tome(["ask", "q", doc, "-m", model, "--device", "cuda"], { env }),
    EXIT.device,
    /CUDA execution provider is not installed/,
  );
  oneLine(await tome(["ask", "q", doc, "-m", model, "--policy", "duo"], { env }), EXIT.usage, /--duo-mask/);
  oneLine(await tome(["ask", "q", doc, "-m", root], { env }), EXIT.modelInvalid, /no config\.json/);
  // a model whose full cache cannot fit: refused before any weight is read (only its config exists)
  const huge = join(root, "huge");
  await Deno.mkdir(huge);
  await Deno.writeTextFile(
    join(huge, "config.json"),
    JSON.stringify({
      model_type: "llama",
      hidden_size: 8192,
      intermediate_size: 28672,
      num_hidden_layers: 80,
      num_attention_heads: 64,
      num_key_value_heads: 64,
      vocab_size: 32000,
    }),
  );
  oneLine(
    await tome(["ask", "q", doc, "-m", huge, "--policy", "full"], { env }),
    EXIT.tooLarge,
    /--policy full would need about .* --budget \d+/,
  );
});

Deno.test({ name: "cleanup cli read files", fn: () => Deno.remove(root, { recursive: true }) });
