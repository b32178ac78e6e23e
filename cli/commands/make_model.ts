import { Argument, type Command, Option } from "commander";
import { dirname, resolve } from "node:path";
import { EXIT, TomeError } from "../../core/errors.ts";
import { removeTreeSync } from "../../core/remove_tree.ts";
import { type Arch, ARCHS } from "../../core/model/config.ts";
import { checkReplaceable, makeRandomModel, markModel, type ModelShape, SIZES } from "../../core/model/make.ts";
import { makeRetrievalModel } from "../../core/model/retrieval.ts";
import { note, usage } from "../output.ts";

interface MakeOptions {
  arch: Arch;
  out: string;
  tokenizer?: string;
  seed: string;
  size: string;
  dtype: "f32" | "bf16";
  llama3Rope?: boolean;
  hidden?: string;
  layers?: string;
  heads?: string;
  kvHeads?: string;
  intermediate?: string;
  force?: boolean;
}

/** `tome make-model tiny`: a checkpoint directory with deterministic random weights. */
export function makeModelCommand(program: Command): void {
  program.command("make-model")
    .description(
      "write a test checkpoint (config.json, model.safetensors, tokenizer) with deterministic random weights",
    )
    .addArgument(
      new Argument("<kind>", "tiny (random weights) or retrieval (constructed to look facts up)").choices([
        "tiny",
        "retrieval",
      ]),
    )
    .requiredOption(
      "-o, --out <dir>",
      "directory to write (must not exist or be empty; --force replaces one that make-model wrote)",
    )
    .option(
      "-t, --tokenizer <dir>",
      "tokenizer files to copy, the vocabulary size taken from them (retrieval: default, learn one from the project's text)",
    )
    .addOption(new Option("--arch <arch>", "architecture").choices([...ARCHS]).default("llama"))
    .addOption(new Option("--size <size>", "shape preset").choices(Object.keys(SIZES)).default("tiny"))
    .option("--hidden <n>", "override the preset's hidden size")
    .option("--layers <n>", "override the number of layers")
    .option("--heads <n>", "override the number of query heads")
    .option("--kv-heads <n>", "override the number of key/value heads")
    .option("--intermediate <n>", "override the MLP size")
    .addOption(new Option("--dtype <dtype>", "weight storage").choices(["f32", "bf16"]).default("bf16"))
    .option("--llama3-rope", "llama only: Llama-3.x rope_scaling")
    .option("--seed <n>", "random seed", "0")
    .option("--force", "replace an --out that tome make-model wrote (it holds .tome-model and only its files)")
    .addHelpText(
      "after",
      `
Example:
  tome make-model tiny --arch qwen3 --out /tmp/tiny-qwen3 --tokenizer ../shared/fixtures/smollm2-tokenizer
  tome make-model tiny --size 360m --out /tmp/random-360m -t ../shared/fixtures/smollm2-tokenizer
  tome make-model retrieval --out /tmp/retrieval -t ../shared/fixtures/smollm2-tokenizer`,
    )
    .action(async (kind: string, opts: MakeOptions) => {
      if (!opts.tokenizer && kind !== "retrieval") {
        throw usage("make-model tiny needs --tokenizer DIR (a directory with tokenizer.json)");
      }
      const shape: ModelShape = { ...SIZES[opts.size] };
      for (const key of ["hidden", "layers", "heads", "kvHeads", "intermediate"] as const) {
        if (opts[key] !== undefined) shape[key] = positiveInt(opts[key], `--${key.replace("kvHeads", "kv-heads")}`);
      }
      if (opts.llama3Rope && opts.arch !== "llama") throw usage("--llama3-rope applies to --arch llama only");
      const seed = positiveInt(opts.seed, "--seed", true);
      await checkReplaceable(opts.out, opts.force ?? false);
      await writeBeside(opts.out, opts.force ?? false, kind, async (tmp) => {
        if (kind === "retrieval") await makeRetrievalModel(tmp, { tokenizer: opts.tokenizer, seed });
        else {
          await makeRandomModel(tmp, {
            arch: opts.arch,
            shape,
            seed,
            dtype: opts.dtype === "f32" ? "F32" : "BF16",
            tokenizer: opts.tokenizer!,
            llama3Rope: opts.llama3Rope,
          });
        }
      });
      note(
        kind === "retrieval"
          ? `wrote the retrieval model (2 layers, constructed induction circuit) to ${opts.out}`
          : `wrote ${opts.arch} ${opts.size} (${shape.layers} layers, hidden ${shape.hidden}) to ${opts.out}`,
      );
    });
}

/**
 * Writes a checkpoint into a temporary directory beside `out`, marks it, and
 * renames it into place (the old directory moved aside first and removed
 * last): a killed run never leaves a half-written checkpoint at `out`. Ctrl-C
 * and SIGTERM remove the temporary directory. Write failures are exit 13.
 */
async function writeBeside(out: string, force: boolean, kind: string, write: (tmp: string) => Promise<void>) {
  const parent = dirname(resolve(out));
  let tmp: string | null = null;
  const cleanup = () => {
    if (tmp) removeTreeSync(tmp);
  };
  const signals: [Deno.Signal, number][] = [["SIGINT", EXIT.interrupted], ["SIGTERM", EXIT.terminated]];
  const handlers = signals.map(([sig, code]) => {
    const h = () => {
      try {
        cleanup();
      } finally {
        Deno.exit(code);
      }
    };
    try {
      Deno.addSignalListener(sig, h);
    } catch {
      // not every platform has every signal
    }
    return [sig, h] as const;
  });
  try {
    await Deno.mkdir(parent, { recursive: true });
    // synchronous, so no signal handler runs between the directory's creation and `tmp` naming it
    tmp = Deno.makeTempDirSync({ dir: parent, prefix: ".tome-make-" });
    await write(tmp);
    await markModel(tmp, kind);
    await Deno.chmod(tmp, 0o755);
    // the directory may have changed since the first check
    const existed = await checkReplaceable(out, force);
    if (existed) {
      // the swap and the bookkeeping are synchronous: a signal handler sees either the old model in place (and
      // removes the new one) or the new one in place (and removes the old one), never the model moved aside
      const old = `${tmp}-old`;
      Deno.renameSync(out, old);
      try {
        Deno.renameSync(tmp, out);
      } catch (err) {
        Deno.renameSync(old, out); // the user's model back in place
        throw err;
      }
      tmp = old;
    } else {
      Deno.renameSync(tmp, out);
      tmp = null;
    }
  } catch (err) {
    if (err instanceof TomeError) throw err;
    const msg = err instanceof Error ? err.message.split("\n")[0] : String(err);
    if (err instanceof Deno.errors.PermissionDenied || /\(os error \d+\)/.test(msg)) {
      throw new TomeError("output", `cannot write --out ${out}: ${msg}`);
    }
    throw err;
  } finally {
    try {
      cleanup();
    } catch {
      // best effort: a leftover .tome-make-* directory is harmless
    }
    for (const [sig, h] of handlers) {
      try {
        Deno.removeSignalListener(sig, h);
      } catch {
        // never added
      }
    }
  }
}

function positiveInt(v: string, flag: string, zeroOk = false): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < (zeroOk ? 0 : 1)) {
    throw usage(`${flag} must be a ${zeroOk ? "non-negative" : "positive"} integer, got ${v}`);
  }
  return n;
}
