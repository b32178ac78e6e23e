import type { Command } from "commander";
import { loadTokenizer } from "../../core/tokens/tokenizer.ts";
import { tokenize } from "../../core/tokens/stream.ts";
import { measureSample, sampleTokens } from "../../core/engine/measure.ts";
import { predictKv } from "../../core/engine/estimate.ts";
import { ASK_DEFAULTS, askFraming } from "../../recipes/ask.ts";
import { buildPrompt } from "../../recipes/prompt.ts";
import { addRunOptions, type RunFlags } from "../options.ts";
import { loadPrepared, prepareRun } from "../run.ts";
import { formatBytes, formatCount, formatSeconds } from "../progress.ts";
import { round, usage, writeStdout } from "../output.ts";

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

      // one pass over the input: the exact token count, and the first tokens kept as the sample
      const wanted = sampleTokens(run);
      const sample: number[] = [];
      let tokens = 0;
      const t0 = performance.now();
      for await (const ids of source.text.pipeThrough(tokenize(tokenizer))) {
        for (let i = 0; i < ids.length && sample.length < wanted; i++) sample.push(ids[i]);
        tokens += ids.length;
      }
      const tokenizeSeconds = (performance.now() - t0) / 1000;
      const kv = predictKv({
        config: p.config,
        plan: run.plan,
        bytesPerElement: run.bytesPerElement,
        prefixTokens: prompt.prefix.length,
        documentTokens: tokens,
        chunk: run.chunk,
        patchTokens: run.questionPatch ? prompt.suffix.length : 0,
        suffixTokens: prompt.suffix.length,
        maxTokens: p.maxTokens,
      });

      const tLoad = performance.now();
      const model = await loadPrepared(p, flags);
      const loadSeconds = (performance.now() - tLoad) / 1000;
      const m = await measureSample(model, run, sample, prompt, SAMPLE_DECODE);
      await model.session.close();
      const prefillRate = m.prefillTokensPerSecond, decodeRate = m.decodeTokensPerSecond, peakRss = m.peakRssBytes;
      const prefillSeconds = (tokens + prompt.prefix.length) / prefillRate;
      const decodeSeconds = p.maxTokens / decodeRate;
      const chunk = run.chunk;

      const result = {
        input: { bytes: source.stats.bytes, files: source.stats.files },
        tokens,
        chunks: kv.chunks,
        model: p.dir,
        device: p.device.device,
        policy: run.policy.name,
        budget: run.budget,
        chunk,
        positions: run.positions,
        kv_dtype: flags.kvDtype,
        max_tokens: p.maxTokens,
        predicted: {
          kv_peak_bytes: kv.peakBytes,
          kv_prefill_peak_bytes: kv.prefillPeakBytes,
          kv_after_read_bytes: kv.afterReadBytes,
          kv_full_bytes: kv.fullBytes,
          peak_rss_bytes: peakRss,
          seconds: {
            load: round(loadSeconds),
            tokenize: round(tokenizeSeconds),
            prefill: round(prefillSeconds),
            decode: round(decodeSeconds),
            total: round(loadSeconds + prefillSeconds + decodeSeconds),
          },
        },
        sample: { tokens: sample.length, prefill_tok_s: round(prefillRate, 1), decode_tok_s: round(decodeRate, 2) },
      };
      if (flags.json) return void await writeStdout(JSON.stringify(result) + "\n");
      const row = (k: string, v: string) => `${k.padEnd(18)}${v}`;
      await writeStdout(
        [
          row(
            "input",
            `${formatBytes(result.input.bytes)} in ${result.input.files} file(s): ${
              formatCount(tokens)
            } tokens, ${kv.chunks} chunks of ${chunk}`,
          ),
          row(
            "policy",
            `${run.policy.name}, budget ${run.budget} entries per layer and head, ${run.positions} positions, ${p.device.device}`,
          ),
          row(
            "KV peak",
            `${formatBytes(kv.peakBytes)} (${kv.peakBytes} bytes; reading ${
              formatBytes(kv.prefillPeakBytes)
            }, answer up to ${p.maxTokens} tokens)`,
          ),
          row("KV full cache", `${formatBytes(kv.fullBytes)} (${(kv.fullBytes / kv.peakBytes).toFixed(0)}× the peak)`),
          row("peak RSS", `~${formatBytes(peakRss)} (measured on a ${formatCount(sample.length)}-token sample)`),
          row(
            "time",
            `~${formatSeconds(result.predicted.seconds.total)}: load ${formatSeconds(loadSeconds)}, prefill ${
              formatSeconds(prefillSeconds)
            } at ${formatCount(prefillRate)} tok/s, answer ${formatSeconds(decodeSeconds)} at ${
              decodeRate.toFixed(1)
            } tok/s`,
          ),
        ].join("\n") + "\n",
      );
    });
}
