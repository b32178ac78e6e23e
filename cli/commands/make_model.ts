import { Argument, type Command, Option } from "commander";
import { dirname } from "node:path";
import { TomeError } from "../../core/errors.ts";
import { type Arch, ARCHS } from "../../core/model/config.ts";
import { makeRandomModel, type ModelShape, SIZES } from "../../core/model/make.ts";
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
    .requiredOption("-o, --out <dir>", "directory to write (must not exist or be empty, unless --force)")
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
    .option("--force", "replace an existing output directory")
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
      await prepareOut(opts.out, opts.force ?? false);
      const seed = positiveInt(opts.seed, "--seed", true);
      // written beside the target and renamed into place: never a half-written checkpoint
      const tmp = await Deno.makeTempDir({ dir: dirname(opts.out), prefix: ".tome-make-" });
      try {
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
        await Deno.chmod(tmp, 0o755);
        await Deno.remove(opts.out, { recursive: true }).catch(() => {});
        await Deno.rename(tmp, opts.out);
      } catch (err) {
        await Deno.remove(tmp, { recursive: true }).catch(() => {});
        throw err;
      }
      note(
        kind === "retrieval"
          ? `wrote the retrieval model (2 layers, constructed induction circuit) to ${opts.out}`
          : `wrote ${opts.arch} ${opts.size} (${shape.layers} layers, hidden ${shape.hidden}) to ${opts.out}`,
      );
    });
}

async function prepareOut(out: string, force: boolean): Promise<void> {
  try {
    const st = await Deno.stat(out);
    if (!st.isDirectory) throw usage(`--out exists and is not a directory: ${out}`);
    for await (const _ of Deno.readDir(out)) {
      if (!force) throw usage(`--out is not empty: ${out} (use --force to replace it)`);
      break;
    }
  } catch (err) {
    if (err instanceof TomeError) throw err;
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  await Deno.mkdir(dirname(out) || ".", { recursive: true });
}

function positiveInt(v: string, flag: string, zeroOk = false): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < (zeroOk ? 0 : 1)) {
    throw usage(`${flag} must be a ${zeroOk ? "non-negative" : "positive"} integer, got ${v}`);
  }
  return n;
}
