import type { Command } from "commander";
import { loadTokenizer } from "../../core/tokens/tokenizer.ts";
import { tokenize } from "../../core/tokens/stream.ts";
import { measureSample, sampleTokens } from "./estimate_sample.ts";
import { predictKv } from "../../core/engine/estimate.ts";
import { ASK_DEFAULTS, askFraming } from "../../recipes/ask.ts";
import { buildPrompt } from "../../recipes/prompt.ts";
import { addRunOptions, type RunFlags } from "../options.ts";
import { loadPrepared, prepareRun } from "../run.ts";
import { usage, writeStdout } from "../output.ts";
import { patchTokens } from "../../core/engine/resolve.ts";
import { KVZIP_PROMPT } from "../../core/policies/kvzip.ts";
import { type Estimate, estimateJson, estimateText } from "./estimate_report.ts";
import { methodJson } from "../method.ts";

/** Decode steps the sample measures. */
const SAMPLE_DECODE = 4;

/** `tome estimate PATH`: a dry run — tokens, predicted KV and total memory, predicted time. */
export function estimateCommand(program: Command): void {
  addRunOptions(
    program.command("estimate")
      .description(
        "dry run: count tokens, predict peak KV (exactly) and memory and time (from a short measured sample)",
      )
      .argument("<input>", "a file, a directory, or - for stdin")
      .option("--question <text>", "the question the run would ask (its length matters a little)", "What does it say?"),
  )
    .addHelpText(
      "after",
      `
Examples:
  tome estimate war_and_peace.txt -m ~/models/SmolLM2-360M-Instruct --budget 1024
  tome estimate ./src -m ./tiny --policy full --json`,
    )
    .action(async (input: string, flags: RunFlags & { question: string }) => {
      if (flags.state || flags.save || flags.cache) {
        throw usage("estimate reads its input: --state, --save and --cache do not apply");
      }
      const p = await prepareRun(input, flags, ASK_DEFAULTS.maxTokens);
      const source = p.source!;
      const { run } = p;
      const tokenizer = await loadTokenizer(p.dir);
      const prompt = buildPrompt(tokenizer, askFraming(flags.question, flags.system), p.config.bosTokenId);
      const t0 = performance.now();
      const { tokens, sample } = await countAndKeep(source.text.pipeThrough(tokenize(tokenizer)), sampleTokens(run));
      const tokenizeSeconds = (performance.now() - t0) / 1000;
      const kv = predictKv({
        config: p.config,
        plan: run.plan,
        bytesPerElement: run.bytesPerElement,
        prefixTokens: prompt.prefix.length,
        documentTokens: tokens,
        chunk: run.chunk,
        patchTokens: patchTokens(run, prompt.suffix.length, tokenizer.encode(KVZIP_PROMPT).length),
        suffixTokens: prompt.suffix.length,
        maxTokens: p.maxTokens,
        ...(run.lowTier
          ? {
            low: {
              budget: run.lowTier.budget,
              entryBytes: run.lowTier.entryBytes,
              promote: !run.policy.sharedAcrossHeads,
            },
          }
          : {}),
      });
      const tLoad = performance.now();
      const model = await loadPrepared(p, flags);
      const loadSeconds = (performance.now() - tLoad) / 1000;
      const m = await measureSample(model, run, sample, prompt, SAMPLE_DECODE);
      await model.session.close();
      const estimate: Estimate = {
        input: { bytes: source.stats.bytes, files: source.stats.files },
        tokens,
        model: p.dir,
        device: p.device.device,
        policy: run.policy.name,
        method: methodJson(run, p.config.headDim),
        budget: run.budget,
        chunk: run.chunk,
        positions: run.positions,
        kvDtype: flags.kvDtype,
        maxTokens: p.maxTokens,
        kv,
        peakRssBytes: m.peakRssBytes,
        seconds: {
          load: loadSeconds,
          tokenize: tokenizeSeconds,
          prefill: (tokens + prompt.prefix.length) / m.prefillTokensPerSecond,
          decode: p.maxTokens / m.decodeTokensPerSecond,
        },
        sample: {
          tokens: sample.length,
          prefillTokensPerSecond: m.prefillTokensPerSecond,
          decodeTokensPerSecond: m.decodeTokensPerSecond,
        },
      };
      await writeStdout(flags.json ? JSON.stringify(estimateJson(estimate)) + "\n" : estimateText(estimate));
    });
}

/** One pass over a token stream: the exact count, and the first `wanted` tokens kept. */
async function countAndKeep(
  ids: ReadableStream<ArrayLike<number>>,
  wanted: number,
): Promise<{ tokens: number; sample: number[] }> {
  const sample: number[] = [];
  let tokens = 0;
  for await (const chunk of ids) {
    for (let i = 0; i < chunk.length && sample.length < wanted; i++) sample.push(chunk[i]);
    tokens += chunk.length;
  }
  return { tokens, sample };
}
