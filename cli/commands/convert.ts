import { type Command, Option } from "commander";
import { isGgufModel } from "../../core/model/gguf/checkpoint.ts";
import { convertToGguf, WRITE_TYPES, type WriteType } from "../../core/model/gguf/convert.ts";
import { formatBytes } from "../progress.ts";
import { note, usage, writeStdout } from "../output.ts";

interface ConvertOptions {
  to: string;
  type: WriteType;
  out?: string;
  json?: boolean;
}

/** `tome convert DIR --to gguf --type q8_0 --out FILE.gguf`: a checkpoint directory as a GGUF file llama.cpp loads. */
export function convertCommand(program: Command): void {
  program.command("convert")
    .description("write a checkpoint directory as a GGUF file (llama.cpp, Ollama, LM Studio load it)")
    .argument("<model>", "checkpoint directory (config.json, *.safetensors, tokenizer.json)")
    .addOption(new Option("--to <format>", "output format").choices(["gguf"]).default("gguf"))
    .addOption(new Option("--type <type>", "weight type of the matrices").choices([...WRITE_TYPES]).default("f16"))
    .option("-o, --out <file>", "GGUF file to write (written beside it first, then renamed into place)")
    .option("--json", "print one JSON object")
    .addHelpText(
      "after",
      `
Norms and biases stay f32; q8_0/q4_0 matrices whose rows are not a multiple of 32 are written f16.

Example:
  tome convert ~/models/SmolLM2-360M-Instruct --type q8_0 --out smollm2-360m-q8_0.gguf
  tome ask "Who is Natasha?" book.txt --model smollm2-360m-q8_0.gguf`,
    )
    .action(async (model: string, opts: ConvertOptions) => {
      if (isGgufModel(model)) throw usage("convert reads a checkpoint directory, not a GGUF file or Ollama model");
      if (!opts.out) throw usage("convert needs --out FILE.gguf");
      const started = performance.now();
      const r = await convertToGguf(model, opts.out, opts.type);
      const seconds = (performance.now() - started) / 1000;
      if (opts.json) {
        return await writeStdout(
          JSON.stringify({ ...r, type: opts.type, seconds: Math.round(seconds * 100) / 100 }) + "\n",
        );
      }
      const mix = Object.entries(r.types).map(([t, n]) => `${n} ${t}`).join(", ");
      note(`wrote ${r.out}: ${r.tensors} tensors (${mix}), ${formatBytes(r.bytes)} in ${seconds.toFixed(1)}s`);
    });
}
