/**
 * Bad and hostile input through the real CLI, one table row per case: the exit
 * code, exactly one `tome:` line on stderr naming the cause, no stack trace or
 * Deno permission advice, nothing on stdout, the time to fail, and no file
 * created, changed or removed in the case's directory (its models, documents
 * and graph cache all live there).
 *
 * Rows marked `lead` are checks that belong early in cli/run.ts (options
 * settled before the document is read); `ignore` marks those that do not hold
 * yet.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { EXIT } from "../core/errors.ts";
import { mixedText } from "./fixture_text.ts";
import { tomeArgs } from "./helpers.ts";
import { writeTestTokenizer } from "./model_fixtures.ts";

interface Case {
  name: string;
  /** Builds what the case needs inside its own directory `d`. */
  setup?: (d: string) => Promise<void>;
  args: (d: string) => string[];
  /** Working directory (default: the case's directory). */
  cwd?: (d: string) => string;
  stdin?: string;
  code: number;
  /** What the one `tome:` line must say. */
  cause: RegExp;
  /** An early check the lead's cli/run.ts owns. */
  lead?: boolean;
  /**
   * A bash script that runs tome as `"$@"` (to redirect stdout, set the
   * environment, or mount a file system first); see {@link inMounts}.
   */
  sh?: (d: string) => string;
  /** Needs `unshare -m` and tmpfs mounts (skipped where they are not permitted). */
  mounts?: boolean;
  /** Not true yet (lead rows only). */
  ignore?: boolean;
  /**
   * The document is stdin (`-`), fed 64 KiB and never closed: the case must fail
   * before reading it to the end (it is killed after 60 s otherwise).
   */
  held?: boolean;
}

const root = await Deno.makeTempDir({ prefix: "tome-bad-input-" });
const tokenizer = await writeTestTokenizer(join(root, "tokenizer"));
const model = join(root, "model");
{
  const made = await run(["make-model", "tiny", "--out", model, "--tokenizer", tokenizer, "--seed", "5"], root);
  if (made.code !== 0) throw new Error(made.stderr);
}
const vocab = JSON.parse(await Deno.readTextFile(join(model, "config.json"))).vocab_size as number;

/**
 * Runs `tome ARGS…` as a user would, in `cwd`, timed. With `hold`, stdin gets
 * `stdin` but is never closed, so a run that reads its document to the end
 * never finishes: it is killed after `limitSeconds` and reported with code -1.
 */
async function run(
  args: string[],
  cwd: string,
  stdin?: string,
  env: Record<string, string> = {},
  opts: { hold?: boolean; limitSeconds?: number; sh?: string } = {},
) {
  const t0 = performance.now();
  const child = new Deno.Command(opts.sh ? "bash" : Deno.execPath(), {
    args: [...(opts.sh ? ["-c", opts.sh, "tome", Deno.execPath()] : []), ...tomeArgs(args)],
    cwd,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", TOME_MODEL: "", ...env },
  }).spawn();
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, (opts.limitSeconds ?? 60) * 1000);
  const w = stdin === undefined ? null : child.stdin.getWriter();
  if (w) {
    await w.write(new TextEncoder().encode(stdin)).catch(() => {});
    if (!opts.hold) await w.close();
  }
  const out = await child.output();
  clearTimeout(timer);
  if (w && opts.hold) await w.close().catch(() => {});
  const dec = new TextDecoder();
  return {
    code: killed ? -1 : out.code,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
    seconds: (performance.now() - t0) / 1000,
  };
}

/** Every path under `dir` with its kind, size and modification time (symlinks not followed). */
async function snapshot(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      const st = await Deno.lstat(p);
      out.set(p, `${st.isDirectory ? "d" : st.isSymlink ? "l" : "f"} ${st.size} ${st.mtime?.getTime()}`);
      if (st.isDirectory) await walk(p);
    }
  };
  await walk(dir);
  return out;
}

/** A copy of the tiny model in `dst`. */
async function copyModel(dst: string): Promise<string> {
  await Deno.mkdir(dst, { recursive: true });
  for await (const e of Deno.readDir(model)) if (e.isFile) await Deno.copyFile(join(model, e.name), join(dst, e.name));
  return dst;
}

/** A copy of the tiny model with `config.json` patched. */
async function withConfig(dst: string, patch: Record<string, unknown>): Promise<void> {
  await copyModel(dst);
  const c = JSON.parse(await Deno.readTextFile(join(dst, "config.json")));
  await Deno.writeTextFile(join(dst, "config.json"), JSON.stringify({ ...c, ...patch }));
}

/**
 * A copy of the tiny model whose safetensors header is replaced by `edit`'s
 * result (an object, or raw text); the data section stays as it was.
 */
async function withHeader(dst: string, edit: (h: Record<string, Record<string, unknown>>) => unknown): Promise<void> {
  await copyModel(dst);
  const file = join(dst, "model.safetensors");
  const bytes = await Deno.readFile(file);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
  const edited = edit(header);
  const json = new TextEncoder().encode(typeof edited === "string" ? edited : JSON.stringify(edited));
  const out = new Uint8Array(8 + json.length + bytes.length - 8 - n);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(bytes.subarray(8 + n), 8 + json.length);
  await Deno.writeFile(file, out);
}

const EMBED = "model.embed_tokens.weight";
const NORM = "model.norm.weight";
const inspect = (d: string) => ["inspect", join(d, "m")];
const ask = (d: string, ...more: string[]) => ["ask", "what is it?", join(d, "doc.txt"), "-m", join(d, "m"), ...more];
/** `ask` on the shared model with a document on stdin that never ends (see `held`). */
const askHeld = (...flags: string[]) => (_d: string) => ["ask", "q", "-", "-m", model, ...flags];
const HELD = { held: true, stdin: mixedText(3, 64 * 1024) };
const doc = async (d: string) => await Deno.writeTextFile(join(d, "doc.txt"), "A short document.\n");

/**
 * A script that, in a private mount namespace, mounts a 64 KiB tmpfs on
 * `d/ro` (then read-only) and one on `d/full` (then filled to the last byte),
 * and runs tome with `env` set. Root ignores permission bits, so a read-only
 * file system is the honest way to refuse a write; the mounts vanish with the
 * process, so nothing is left in `d`.
 */
const inMounts = (d: string, env = "") => {
  const q = (p: string) => `'${p.replaceAll("'", "'\\''")}'`;
  const inner = [
    `mount -t tmpfs -o size=64k tmpfs ${q(join(d, "ro"))}`,
    `mount -o remount,ro ${q(join(d, "ro"))}`,
    `mount -t tmpfs -o size=64k tmpfs ${q(join(d, "full"))}`,
    `{ head -c 1000000 /dev/zero > ${q(join(d, "full", "fill"))} 2>/dev/null; true; }`,
    `${env} exec "$@"`,
  ].join(" && ");
  return `exec unshare -m bash -c ${q(inner)} tome "$@"`;
};
const mountPoints = async (d: string) => {
  await Deno.mkdir(join(d, "ro"));
  await Deno.mkdir(join(d, "full"));
};
/** Whether this process may make a mount namespace with a tmpfs (root on Linux, usually). */
const canMount = await (async () => {
  try {
    const probe = await Deno.makeTempDir();
    const out = await new Deno.Command("unshare", {
      args: ["-m", "sh", "-c", `mount -t tmpfs -o size=64k tmpfs '${probe}' && touch '${probe}/x'`],
      stdout: "null",
      stderr: "null",
    }).output();
    await Deno.remove(probe, { recursive: true });
    return out.success;
  } catch {
    return false;
  }
})();
if (!canMount) {
  console.log("bad input: read-only and full-disk rows skipped: `unshare -m` with a tmpfs is not permitted here");
}
const askDoc = (
  d: string,
  ...more: string[]
) => ["ask", "q", join(d, "doc.txt"), "-m", model, "--no-progress", ...more];

const table: Case[] = [
  // --- write failures (exit 13) ---
  {
    name: "write: stdout to /dev/full",
    setup: doc,
    args: (d) => askDoc(d, "--max-tokens", "2"),
    // the run itself succeeds up to the answer: its graph goes to a cache outside the case's directory
    sh: () => `TOME_CACHE='${join(root, "answer-cache")}' exec "$@" > /dev/full`,
    code: EXIT.output,
    cause: /^tome: cannot write to standard output: No space left on device$/,
  },
  {
    name: "write: --metrics onto a read-only file system",
    setup: async (d) => (await doc(d), await mountPoints(d)),
    args: (d) => askDoc(d, "--metrics", join(d, "ro", "m.ndjson")),
    sh: (d) => inMounts(d),
    mounts: true,
    code: EXIT.output,
    cause: /--metrics \S+ro\/m\.ndjson cannot be written: Read-only file system/,
  },
  {
    name: "write: --metrics onto a full disk",
    setup: async (d) => (await doc(d), await mountPoints(d)),
    args: (d) => askDoc(d, "--metrics", join(d, "full", "m.ndjson")),
    sh: (d) => inMounts(d),
    mounts: true,
    code: EXIT.output,
    cause: /--metrics \S+full\/m\.ndjson cannot be written: No space left on device/,
  },
  {
    name: "write: read --save onto a read-only file system",
    setup: async (d) => (await doc(d), await mountPoints(d)),
    args: (d) => ["read", join(d, "doc.txt"), "-m", model, "--save", join(d, "ro", "s.state")],
    sh: (d) => inMounts(d),
    mounts: true,
    code: EXIT.output,
    cause: /--save \S+ro\/s\.state cannot be written: Read-only file system/,
  },
  {
    name: "write: read --save onto a full disk",
    setup: async (d) => (await doc(d), await mountPoints(d)),
    args: (d) => ["read", join(d, "doc.txt"), "-m", model, "--save", join(d, "full", "s.state")],
    sh: (d) => inMounts(d),
    mounts: true,
    code: EXIT.output,
    cause: /--save \S+full\/s\.state cannot be written: No space left on device/,
  },
  {
    name: "write: make-model --out under a read-only parent",
    setup: mountPoints,
    args: (d) => ["make-model", "tiny", "--out", join(d, "ro", "m"), "-t", tokenizer],
    sh: (d) => inMounts(d),
    mounts: true,
    code: EXIT.output,
    cause: /cannot write --out \S+ro\/m: Read-only file system/,
  },
  {
    name: "write: make-model --out on a full disk",
    setup: mountPoints,
    args: (d) => ["make-model", "tiny", "--out", join(d, "full", "m"), "-t", tokenizer],
    sh: (d) => inMounts(d),
    mounts: true,
    code: EXIT.output,
    cause: /cannot write --out \S+full\/m: No space left on device/,
  },
  {
    name: "write: the graph cache on a read-only file system",
    setup: async (d) => (await doc(d), await mountPoints(d)),
    args: (d) => askDoc(d),
    sh: (d) => inMounts(d, `TOME_CACHE='${join(d, "ro", "cache")}'`),
    mounts: true,
    code: EXIT.output,
    cause: /cannot write the graph cache \(Read-only file system\)/,
  },
  {
    name: "write: the graph cache on a full disk",
    setup: async (d) => (await doc(d), await mountPoints(d)),
    args: (d) => askDoc(d),
    sh: (d) => inMounts(d, `TOME_CACHE='${join(d, "full", "cache")}'`),
    mounts: true,
    code: EXIT.output,
    cause: /cannot write the graph cache \(No space left on device\)/,
  },
  // --- special files: no Deno permission advice ---
  {
    name: "special: TOME_MODEL=/dev/null",
    setup: doc,
    args: (d) => ["ask", "q", join(d, "doc.txt")],
    sh: () => `TOME_MODEL=/dev/null exec "$@"`,
    code: EXIT.unreadable,
    cause:
      /^tome: cannot read model config \/dev\/null\/config\.json: \/dev\/null\/config\.json is a special file tome does not open$/,
  },
  {
    name: "special: /proc/self/maps as the input",
    args: () => ["ask", "q", "/proc/self/maps", "-m", model],
    code: EXIT.unreadable,
    cause: /^tome: cannot read input \/proc\/self\/maps: \/proc\/self\/maps is a special file tome does not open$/,
  },

  // --- safetensors headers (exit 10) ---
  {
    name: "safetensors: header length beyond the file",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      const f = join(d, "m", "model.safetensors");
      const b = await Deno.readFile(f);
      new DataView(b.buffer).setBigUint64(0, 1n << 50n, true);
      await Deno.writeFile(f, b);
    },
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /model\.safetensors: not a safetensors file: bad header length/,
  },
  {
    name: "safetensors: header not JSON",
    setup: (d) => withHeader(join(d, "m"), () => '{"a": {"dtype": "F32",'),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /model\.safetensors: corrupt safetensors header/,
  },
  {
    name: "safetensors: header null",
    setup: (d) => withHeader(join(d, "m"), () => "null"),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /model\.safetensors: safetensors header is null/,
  },
  {
    name: "safetensors: a null entry",
    setup: (d) => withHeader(join(d, "m"), (h) => ({ ...h, [NORM]: null })),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.norm\.weight is null/,
  },
  {
    name: "safetensors: shape missing",
    setup: (d) => withHeader(join(d, "m"), (h) => ({ ...h, [NORM]: { ...h[NORM], shape: undefined } })),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.norm\.weight has shape undefined/,
  },
  {
    name: "safetensors: a string in the shape",
    setup: (d) => withHeader(join(d, "m"), (h) => ({ ...h, [EMBED]: { ...h[EMBED], shape: [String(vocab), 64] } })),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.embed_tokens\.weight has shape .*non-negative integers/,
  },
  {
    name: "safetensors: fractional shape with the right element count",
    setup: (d) => withHeader(join(d, "m"), (h) => ({ ...h, [EMBED]: { ...h[EMBED], shape: [vocab * 128, 0.5] } })),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.embed_tokens\.weight has shape/,
  },
  {
    name: "safetensors: negative data_offsets",
    setup: (d) =>
      withHeader(join(d, "m"), (h) => {
        const [b, e] = h[NORM].data_offsets as number[];
        return { ...h, [NORM]: { ...h[NORM], data_offsets: [b - e - 8, -8] } };
      }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.norm\.weight has data_offsets \[-\d+,-8\]/,
  },
  {
    name: "safetensors: begin after end",
    setup: (d) =>
      withHeader(join(d, "m"), (h) => {
        const [b, e] = h[NORM].data_offsets as number[];
        return { ...h, [NORM]: { ...h[NORM], data_offsets: [e, b] } };
      }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.norm\.weight has data_offsets .*begin ≤ end/,
  },
  {
    name: "safetensors: two tensors on the same bytes",
    setup: (d) =>
      withHeader(join(d, "m"), (h) => {
        const other = "model.layers.0.input_layernorm.weight";
        return { ...h, [NORM]: { ...h[NORM], data_offsets: h[other].data_offsets } };
      }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensors .* overlap/,
  },
  {
    name: "safetensors: a range past the data section",
    setup: (d) =>
      withHeader(join(d, "m"), (h) => {
        const [b, e] = h[NORM].data_offsets as number[];
        return { ...h, [NORM]: { ...h[NORM], data_offsets: [b + 1e9, e + 1e9] } };
      }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.norm\.weight ends at byte \d+ of the data section, which holds \d+ bytes/,
  },
  {
    name: "safetensors: a range shorter than the shape",
    setup: (d) =>
      withHeader(join(d, "m"), (h) => {
        const [b, e] = h[NORM].data_offsets as number[];
        return { ...h, [NORM]: { ...h[NORM], data_offsets: [b, e - 2] } };
      }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.norm\.weight has a byte range that does not match its shape/,
  },
  {
    name: "safetensors: unsupported dtype",
    setup: (d) => withHeader(join(d, "m"), (h) => ({ ...h, [NORM]: { ...h[NORM], dtype: "I64" } })),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.norm\.weight has dtype I64; tome reads F32, F16 and BF16/,
  },
  {
    name: "safetensors: __metadata__ with a number",
    setup: (d) => withHeader(join(d, "m"), (h) => ({ ...h, __metadata__: { format: 1 } })),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /__metadata__ format is a number, expected a string/,
  },
  {
    name: "safetensors: file cut in the data",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      const f = join(d, "m", "model.safetensors");
      await Deno.truncate(f, (await Deno.stat(f)).size - 100);
    },
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /ends at byte \d+ of the data section/,
  },
  {
    name: "safetensors: file of 3 bytes",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeFile(join(d, "m", "model.safetensors"), Uint8Array.of(1, 2, 3));
    },
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /model\.safetensors: truncated/,
  },
  {
    name: "safetensors: a bad header refused by ask before any graph is built",
    setup: async (d) => {
      await withHeader(join(d, "m"), (h) => ({ ...h, [NORM]: { ...h[NORM], shape: [-64] } }));
      await doc(d);
    },
    args: (d) => ask(d),
    code: EXIT.modelInvalid,
    cause: /tensor model\.norm\.weight has shape \[-64\]/,
  },
  // --- config.json bounds and consistency (exit 10) ---
  ...([
    ["num_hidden_layers", 1e9, /num_hidden_layers must be a positive integer ≤ 1024, got 1000000000/],
    ["hidden_size", 2 ** 40, /hidden_size must be a positive integer ≤ 65536/],
    ["vocab_size", 2 ** 53, /vocab_size must be a positive integer ≤ 4194304/],
    ["num_attention_heads", 0, /num_attention_heads must be a positive integer/],
    ["intermediate_size", "128", /intermediate_size must be a positive integer .*got "128"/],
    ["max_position_embeddings", -1, /max_position_embeddings must be a positive integer/],
    ["num_key_value_heads", 3, /4 attention heads do not divide into 3 key\/value heads/],
    ["head_dim", 15, /head dimension 15 must be an even integer/],
    ["bos_token_id", 1e6, /bos_token_id 1000000 is not a token id/],
    ["rms_norm_eps", 1e309, /rms_norm_eps must be a positive number ≤ 1, got Infinity/],
  ] as const).map(([key, value, cause]): Case => ({
    name: `config.json: ${key} ${JSON.stringify(value)}`,
    setup: async (d) => {
      await withConfig(join(d, "m"), { [key]: value });
      // JSON.stringify writes Infinity as null: put the literal back
      if (value === 1e309) {
        const p = join(d, "m", "config.json");
        await Deno.writeTextFile(p, (await Deno.readTextFile(p)).replace(`"${key}":null`, `"${key}":1e309`));
      }
    },
    args: inspect,
    code: EXIT.modelInvalid,
    cause,
  })),
  {
    name: "config.json: llama3 rope_scaling with low ≥ high frequency factor",
    setup: (d) =>
      withConfig(join(d, "m"), {
        rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 4, high_freq_factor: 1 },
      }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /rope_scaling .* is not supported/,
  },
  {
    name: "config.json: not JSON",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeTextFile(join(d, "m", "config.json"), '{"model_type": "llama",\n"hidden_size": ');
    },
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /config\.json is not valid JSON/,
  },
  {
    name: "config.json: vocab_size other than the embedding's rows",
    setup: (d) => withConfig(join(d, "m"), { vocab_size: vocab + 1 }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: new RegExp(`tensor model\\.embed_tokens\\.weight has shape \\[${vocab},64\\], config\\.json implies`),
  },
  {
    name: "config.json: key/value heads other than k_proj's",
    setup: (d) => withConfig(join(d, "m"), { num_key_value_heads: 4 }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape \[32,64\], config\.json implies \[64,64\]/,
  },
  {
    name: "config.json: more layers than the weights",
    setup: (d) => withConfig(join(d, "m"), { num_hidden_layers: 3 }),
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /missing tensor model\.layers\.2\./,
  },
  {
    name: "config.json: a hostile config refused by ask before the document is read",
    setup: async (d) => {
      await withConfig(join(d, "m"), { num_hidden_layers: 1e6 });
      await doc(d);
    },
    args: (d) => ask(d),
    code: EXIT.modelInvalid,
    cause: /num_hidden_layers must be a positive integer ≤ 1024/,
  },
  {
    name: "generation_config.json that is not JSON",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeTextFile(join(d, "m", "generation_config.json"), "{ not json");
      await doc(d);
    },
    args: (d) => ask(d),
    code: EXIT.modelInvalid,
    cause: /generation_config\.json is not valid JSON/,
  },
  {
    name: "generation_config.json that is not an object",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeTextFile(join(d, "m", "generation_config.json"), "[1, 2]");
      await doc(d);
    },
    args: (d) => ask(d),
    code: EXIT.modelInvalid,
    cause: /generation_config\.json is not a JSON object/,
  },
  {
    name: "ask --state on a file that is not a state",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeTextFile(join(d, "s.tstate"), "a text file named like a state");
    },
    args: (d) => ["ask", "--state", join(d, "s.tstate"), "what?", "--model", join(d, "m")],
    code: EXIT.stateInvalid,
    cause: /s\.tstate: not a valid tome state/,
  },
  {
    name: "ask: --policy pyramid:nope",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await doc(d);
    },
    args: (d) => [...ask(d), "--policy", "pyramid:nope"],
    code: EXIT.usage,
    cause: /--policy: unknown policy "pyramid:nope"/,
  },
  // --- tokenizer against the model ---
  {
    name: "tokenizer larger than the embedding",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      const p = join(d, "m", "tokenizer.json");
      const t = JSON.parse(await Deno.readTextFile(p));
      t.added_tokens.push({
        id: vocab + 20,
        content: "<extra>",
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      });
      await Deno.writeTextFile(p, JSON.stringify(t));
      await doc(d);
    },
    args: (d) => ask(d),
    code: EXIT.modelInvalid,
    cause: new RegExp(`the tokenizer has ${vocab + 21} tokens but the embedding .* has ${vocab} rows`),
  },
  {
    name: "model without tokenizer.json",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.remove(join(d, "m", "tokenizer.json"));
      await doc(d);
    },
    args: (d) => ask(d),
    code: EXIT.tokenizerMissing,
    cause: /no tokenizer\.json in/,
  },
  // --- shards ---
  {
    name: "shards: the index names a missing shard",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeTextFile(
        join(d, "m", "model.safetensors.index.json"),
        JSON.stringify({ weight_map: { [EMBED]: "model-00001-of-00002.safetensors" } }),
      );
    },
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /weights file model-00001-of-00002\.safetensors named by model\.safetensors\.index\.json is missing/,
  },
  {
    name: "shards: the index names a path outside the model",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeTextFile(
        join(d, "m", "model.safetensors.index.json"),
        JSON.stringify({ weight_map: { [EMBED]: "../m/model.safetensors" } }),
      );
    },
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /names "\.\.\/m\/model\.safetensors", not a file name/,
  },
  {
    name: "shards: the index is not JSON",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeTextFile(join(d, "m", "model.safetensors.index.json"), "{weight_map");
    },
    args: inspect,
    code: EXIT.modelInvalid,
    cause: /model\.safetensors\.index\.json is not valid JSON/,
  },
  {
    name: "model path is a file",
    setup: doc,
    args: (d) => ["inspect", join(d, "doc.txt")],
    code: EXIT.modelInvalid,
    cause: /model is not a directory/,
  },
  // --- make-model never replaces what it did not write (exit 2) ---
  {
    name: "make-model --force on a directory of documents",
    setup: async (d) => {
      await Deno.mkdir(join(d, "docs"));
      await Deno.writeTextFile(join(d, "docs", "thesis.txt"), "years of work\n");
    },
    args: (d) => ["make-model", "tiny", "--out", join(d, "docs"), "-t", tokenizer, "--force"],
    code: EXIT.usage,
    cause: /--force replaces only a directory written by tome make-model, and .*docs has no \.tome-model/,
  },
  {
    name: "make-model --force --out . in a working tree",
    setup: async (d) => {
      await Deno.mkdir(join(d, "repo", ".git"), { recursive: true });
      await Deno.writeTextFile(join(d, "repo", "main.ts"), "console.log(1);\n");
    },
    cwd: (d) => join(d, "repo"),
    args: () => ["make-model", "tiny", "--out", ".", "-t", tokenizer, "--force"],
    code: EXIT.usage,
    cause: /--out is the current directory or one of its parents, which tome will not replace: \.$/,
  },
  {
    name: "make-model --force --out .. (a parent of the working directory)",
    setup: async (d) => {
      await Deno.mkdir(join(d, "a", "b"), { recursive: true });
      await Deno.writeTextFile(join(d, "a", "keep.txt"), "keep\n");
    },
    cwd: (d) => join(d, "a", "b"),
    args: () => ["make-model", "tiny", "--out", "..", "-t", tokenizer, "--force"],
    code: EXIT.usage,
    cause: /current directory or one of its parents/,
  },
  {
    name: "make-model --force on a made model where a user added a file",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.writeTextFile(join(d, "m", "notes.md"), "my notes\n");
    },
    args: (d) => ["make-model", "tiny", "--out", join(d, "m"), "-t", tokenizer, "--force"],
    code: EXIT.usage,
    cause: /--force will not replace .*: it holds notes\.md, which tome make-model did not write/,
  },
  {
    name: "make-model --force on a symbolic link",
    setup: async (d) => {
      await copyModel(join(d, "m"));
      await Deno.symlink(join(d, "m"), join(d, "link"));
    },
    args: (d) => ["make-model", "tiny", "--out", join(d, "link"), "-t", tokenizer, "--force"],
    code: EXIT.usage,
    cause: /--out is a symbolic link/,
  },
  {
    name: "make-model --out an existing file",
    setup: doc,
    args: (d) => ["make-model", "tiny", "--out", join(d, "doc.txt"), "-t", tokenizer, "--force"],
    code: EXIT.usage,
    cause: /--out exists and is not a directory/,
  },
  {
    name: "make-model: a shape past the config bounds",
    args: (d) => ["make-model", "tiny", "--out", join(d, "new"), "-t", tokenizer, "--layers", "5000"],
    code: EXIT.usage,
    cause: /shape: num_hidden_layers must be a positive integer ≤ 1024/,
  },
  {
    name: "make-model: --out under a file",
    setup: doc,
    args: (d) => ["make-model", "tiny", "--out", join(d, "doc.txt", "m"), "-t", tokenizer],
    code: EXIT.output,
    cause: /cannot write --out/,
  },
  // --- the README's input errors, through the reading commands (cli_tokens_test covers `tome tokens`) ---
  {
    name: "summarize: binary input",
    setup: async (d) => await Deno.writeFile(join(d, "a.bin"), Uint8Array.from({ length: 4096 }, (_, i) => i % 7)),
    args: (d) => ["summarize", join(d, "a.bin"), "-m", model],
    code: EXIT.binary,
    cause: /binary/,
  },
  {
    name: "ask: empty input file",
    setup: async (d) => await Deno.writeTextFile(join(d, "empty.txt"), ""),
    args: (d) => ["ask", "q", join(d, "empty.txt"), "-m", model],
    code: EXIT.empty,
    cause: /empty/,
  },
  {
    name: "summarize: empty stdin",
    args: () => ["summarize", "-", "-m", model],
    stdin: "",
    code: EXIT.empty,
    cause: /empty/,
  },
  {
    name: "estimate: input not found",
    args: (d) => ["estimate", join(d, "nope.txt"), "-m", model],
    code: EXIT.notFound,
    cause: /input not found/,
  },
  {
    name: "code: a directory holding only binary files",
    setup: async (d) => {
      await Deno.mkdir(join(d, "bins"));
      await Deno.writeFile(join(d, "bins", "x.bin"), Uint8Array.from({ length: 2048 }, (_, i) => i % 5));
    },
    args: (d) => ["code", join(d, "bins"), "what is it?", "-m", model],
    code: EXIT.noTextFiles,
    cause: /no readable text files/,
    lead: true,
  },
  {
    name: "ask: unknown option",
    setup: doc,
    args: (d) => ["ask", "q", join(d, "doc.txt"), "-m", model, "--frobnicate"],
    code: EXIT.usage,
    cause: /unknown option '--frobnicate'/,
  },
  {
    name: "ask: a negative budget",
    setup: doc,
    args: (d) => ["ask", "q", join(d, "doc.txt"), "-m", model, "--budget", "-5"],
    code: EXIT.usage,
    cause: /budget "-5"/,
  },
  {
    name: "ask: a budget in an unknown unit",
    setup: doc,
    args: (d) => ["ask", "q", join(d, "doc.txt"), "-m", model, "--budget", "5XB"],
    code: EXIT.usage,
    cause: /unknown unit "XB"/,
  },
  {
    name: "ask: --max-tokens 0",
    ...HELD,
    args: askHeld("--max-tokens", "0"),
    code: EXIT.usage,
    cause: /--max-tokens must be an integer ≥ 1, got 0/,
  },
  {
    name: "ask: --duo-sparsity 2",
    ...HELD,
    args: askHeld("--policy", "snapkv", "--duo-sparsity", "2"),
    code: EXIT.usage,
    cause: /--duo-sparsity must be a number in \[0, 1\], got 2/,
  },
  {
    name: "ask: unknown --kv-dtype",
    ...HELD,
    args: askHeld("--kv-dtype", "f8"),
    code: EXIT.usage,
    cause: /--kv-dtype/,
  },
  // --- options the lead's cli/run.ts checks before the document is read ---
  { name: "ask: --top-p 2", ...HELD, args: askHeld("--top-p", "2"), code: EXIT.usage, cause: /--top-p/, lead: true },
  {
    name: "ask: --temperature -1",
    ...HELD,
    args: askHeld("--temperature", "-1"),
    code: EXIT.usage,
    cause: /--temperature/,
    lead: true,
  },
  { name: "ask: --seed abc", ...HELD, args: askHeld("--seed", "abc"), code: EXIT.usage, cause: /--seed/, lead: true },
  { name: "ask: --chunk 0", ...HELD, args: askHeld("--chunk", "0"), code: EXIT.usage, cause: /--chunk/, lead: true },
  {
    name: "ask: --chunk abc",
    ...HELD,
    args: askHeld("--chunk", "abc"),
    code: EXIT.usage,
    cause: /--chunk/,
    lead: true,
  },
  {
    name: "ask: --threads 0",
    ...HELD,
    args: askHeld("--threads", "0"),
    code: EXIT.usage,
    cause: /--threads/,
    lead: true,
  },
  {
    name: "ask: --metrics in a missing directory",
    ...HELD,
    args: (d) => ["ask", "q", "-", "-m", model, "--metrics", join(d, "no", "such", "m.ndjson")],
    code: EXIT.output,
    cause: /--metrics/,
    lead: true,
  },
];

/** Rows that do not hold yet (none: every option and input kind is checked before the model loads). */
const IGNORED = new Set<string>([]);
/** `TOME_TEST_LEAD=1` runs only the lead rows, ignored ones included: to see which hold after a change to cli/run.ts. */
const leadOnly = Deno.env.get("TOME_TEST_LEAD") === "1";
/** `TOME_TEST_ONLY=REGEX` runs only the rows whose names match. */
const only = new RegExp(Deno.env.get("TOME_TEST_ONLY") ?? "");
for (const c of table) {
  c.ignore = leadOnly ? !c.lead : IGNORED.has(c.name) || !only.test(c.name) || (c.mounts === true && !canMount);
}

/** Runs one case; returns what is wrong with it (empty when nothing). */
async function check(c: Case, d: string): Promise<string[]> {
  await c.setup?.(d);
  const before = await snapshot(d);
  const r = await run(c.args(d), c.cwd?.(d) ?? d, c.stdin, { TOME_CACHE: join(d, "cache") }, {
    hold: c.held,
    sh: c.sh?.(d),
  });
  const after = await snapshot(d);
  const problems: string[] = [];
  const lines = r.stderr.trimEnd().split("\n");
  if (r.code === -1) problems.push(`no exit within 60 s${c.held ? " (it read the document before failing)" : ""}`);
  else if (r.code !== c.code) problems.push(`exit ${r.code}, expected ${c.code}`);
  if (lines.length !== 1 || !lines[0].startsWith("tome: ")) problems.push(`stderr is not one tome: line`);
  if (!c.cause.test(lines[0])) problems.push(`the line does not match ${c.cause}`);
  if (/^\s+at |stack|--allow-|Uncaught|internal error/im.test(r.stderr)) problems.push("a stack trace or Deno advice");
  if (r.stdout !== "") problems.push(`stdout: ${JSON.stringify(r.stdout.slice(0, 100))}`);
  const changed = [...new Set([...before.keys(), ...after.keys()])].filter((p) => before.get(p) !== after.get(p));
  if (changed.length) problems.push(`changed: ${changed.slice(0, 3).map((p) => p.slice(d.length + 1)).join(", ")}`);
  return problems.length ? [...problems, `stderr: ${r.stderr.trim().slice(0, 300)}`] : [];
}

/** Runs the cases three at a time (each in its own directory); returns the failures. */
async function runAll(cases: Case[]): Promise<string[]> {
  const failures: string[] = [];
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const i = next++;
      const d = join(root, `case-${table.indexOf(cases[i])}`);
      await Deno.mkdir(d);
      const problems = await check(cases[i], d);
      if (problems.length) failures.push(`${cases[i].name}:\n    ${problems.join("\n    ")}`);
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  return failures;
}

Deno.test(`bad input: ${table.filter((c) => !c.ignore).length} cases through the CLI, one line each, nothing written`, async () => {
  assert.ok(table.length >= 40);
  const pristine = await snapshot(model);
  const failures = await runAll(table.filter((c) => !c.ignore));
  assert.deepEqual(failures, [], `\n${failures.join("\n")}`);
  assert.deepEqual(await snapshot(model), pristine, "the shared model changed");
});

for (const c of table.filter((c) => c.ignore && (c.lead || leadOnly))) {
  Deno.test({ name: `bad input (lead: not yet checked early): ${c.name}`, ignore: true, fn: () => {} });
}

/** Spawns `tome ARGS…` (not waited for). */
function spawnTome(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: tomeArgs(args),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
}

/** Names in `dir` that make-model leaves while it works (`.tome-make-*`). */
async function partials(dir: string): Promise<string[]> {
  const out = [];
  for await (const e of Deno.readDir(dir)) if (e.name.startsWith(".tome-make-")) out.push(e.name);
  return out;
}

/** The files of a checkpoint directory with their bytes' digest. */
async function contents(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const e of Deno.readDir(dir)) {
    const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(join(dir, e.name)));
    out[e.name] = btoa(String.fromCharCode(...new Uint8Array(digest)));
  }
  return out;
}

Deno.test("make-model --force replaces its own output whole: Ctrl-C removes its temp dir, SIGKILL leaves the old or the new", async () => {
  const d = await Deno.makeTempDir({ dir: root, prefix: "replace-" });
  const out = join(d, "m");
  const make = (seed: string) => ["make-model", "tiny", "--out", out, "-t", tokenizer, "--force", "--seed", seed];
  assert.equal((await run(make("1"), d)).code, 0);
  const old = await contents(out);
  const reference = join(d, "reference");
  const made = await run(["make-model", "tiny", "--out", reference, "-t", tokenizer, "--seed", "2"], d);
  assert.equal(made.code, 0);
  const fresh = await contents(reference);
  assert.notEqual(old["model.safetensors"], fresh["model.safetensors"]);
  assert.deepEqual(Object.keys(old).sort(), Object.keys(fresh).sort());
  assert.ok(old[".tome-model"]);

  // Ctrl-C while it writes: exit 130, the temp dir gone, the old model untouched
  const interrupted = spawnTome(make("2"));
  for (let i = 0; i < 400 && (await partials(d)).length === 0; i++) await new Promise((r) => setTimeout(r, 25));
  interrupted.kill("SIGINT");
  const status = await interrupted.output();
  assert.equal(status.code, 130, new TextDecoder().decode(status.stderr));
  assert.deepEqual(await partials(d), []);
  assert.deepEqual(await contents(out), old);

  // SIGKILL at several points: the model is always whole, the old one or the new one
  const seen = new Set<string>();
  const trials = Number(Deno.env.get("TOME_KILL_TRIALS") ?? 5);
  const fractions = Array.from({ length: trials }, (_, i) => 0.2 + (0.75 * i) / Math.max(1, trials - 1));
  for (const fraction of fractions) {
    const delay = Math.round(fraction * made.seconds * 1000);
    const child = spawnTome(make("2"));
    await new Promise((r) => setTimeout(r, delay));
    try {
      child.kill("SIGKILL");
    } catch {
      // it had finished
    }
    await child.output();
    const now = await contents(out);
    const which = JSON.stringify(now) === JSON.stringify(old)
      ? "old"
      : JSON.stringify(now) === JSON.stringify(fresh)
      ? "new"
      : "";
    assert.ok(which, `half-written after SIGKILL at ${delay} ms: ${JSON.stringify(now)}`);
    seen.add(which);
    console.log(`SIGKILL at ${delay} ms: ${which}`);
    if (which === "new") {
      // put the old one back for the next trial
      assert.equal((await run(make("1"), d)).code, 0);
    }
  }
  // a later run still works, over whatever SIGKILL left beside it
  const later = await run(make("2"), d);
  assert.equal(later.code, 0, later.stderr);
  assert.deepEqual(await contents(out), fresh);
});

/** NDJSON lines' shape: each line's event type, and the tokens of chunk events (what a whole file holds, timings aside). */
function metricsShape(text: string): string[] {
  assert.ok(text.endsWith("\n"), "a metrics file ends its last line");
  return text.trimEnd().split("\n").map((line) => {
    const e = JSON.parse(line);
    return e.type === "chunk" ? `chunk ${e.tokens}` : e.type;
  });
}

Deno.test("--metrics under SIGKILL: the target is absent or whole, never half-written; the next run works and removes the dead run's temp file", async () => {
  const d = await Deno.makeTempDir({ dir: root, prefix: "metrics-kill-" });
  const docPath = join(d, "doc.txt");
  await Deno.writeTextFile(docPath, mixedText(7, 30_000));
  const target = join(d, "m.ndjson");
  const args = ["ask", "q", docPath, "-m", model, "--max-tokens", "4", "--no-progress", "--metrics", target];
  const env = { TOME_CACHE: join(d, "cache") };
  // the reference: a whole run, once the graph is cached
  assert.equal((await run(args, d, undefined, env)).code, 0);
  const reference = await run(args, d, undefined, env);
  assert.equal(reference.code, 0, reference.stderr);
  const whole = metricsShape(await Deno.readTextFile(target));
  assert.ok(whole.length > 5 && whole.at(-1) === "token", whole.join());
  const temps = () => [...Deno.readDirSync(d)].map((e) => e.name).filter((n) => n.startsWith(".m.ndjson.tmp-"));
  let next = 0.31;
  const outcomes: string[] = [];
  const trials = Number(Deno.env.get("TOME_KILL_TRIALS") ?? 6);
  for (let trial = 0; trial < trials; trial++) {
    await Deno.remove(target).catch(() => {});
    next = (next * 7.13 + 0.17) % 1; // points spread over the run, the same each time
    const delay = Math.round((0.15 + 0.95 * next) * reference.seconds * 1000);
    const child = new Deno.Command(Deno.execPath(), {
      args: tomeArgs(args),
      env: { ...env, NO_COLOR: "1", TOME_MODEL: "" },
      stdout: "null",
      stderr: "null",
    }).spawn();
    await new Promise((r) => setTimeout(r, delay));
    try {
      child.kill("SIGKILL");
    } catch {
      // it had finished
    }
    await child.status;
    const text = await Deno.readTextFile(target).catch(() => null);
    if (text !== null) assert.deepEqual(metricsShape(text), whole, `half-written after SIGKILL at ${delay} ms`);
    outcomes.push(`${delay} ms: ${text === null ? "absent" : "whole"}${temps().length ? " + temp" : ""}`);
  }
  console.log(`SIGKILL during --metrics: ${outcomes.join(", ")}`);
  // killed runs leave their temp files; the next run works and removes them
  const after = await run(args, d, undefined, env);
  assert.equal(after.code, 0, after.stderr);
  assert.deepEqual(metricsShape(await Deno.readTextFile(target)), whole);
  assert.deepEqual(temps(), []);
});

Deno.test({ name: "cleanup bad input files", fn: () => Deno.remove(root, { recursive: true }) });
