/** `tome train locret|duo`: trains Locret's retaining heads and DuoAttention's head mask on the frozen model. */
import type { Command } from "commander";
import { fsError, TomeError } from "../../core/errors.ts";
import { loadCorpus } from "../../core/input/corpus.ts";
import { openCheckpoint } from "../../core/model/checkpoint.ts";
import { loadWeights } from "../../core/model/reference.ts";
import { loadTokenizer } from "../../core/tokens/tokenizer.ts";
import { DUO_DEFAULTS, duoTsv, measureDuo, trainDuo } from "../../core/train/duo.ts";
import { runSamples } from "../../core/train/samples.ts";
import { graphSampleTargets, openFeatureSession } from "../../core/train/graph_targets.ts";
import {
  buildPools,
  LOCRET_DEFAULTS,
  type LocretTrainOptions,
  trainHeads,
  type TrainProgress,
  writeHeads,
} from "../../core/train/locret.ts";
import { checkWritable, intFlag, numberFlag, sharedOption } from "../options.ts";
import { formatSeconds, StatusLine } from "../progress.ts";
import { note } from "../output.ts";
import { modelDir } from "../run.ts";

interface TrainFlags {
  model?: string;
  out: string;
  data?: string[];
  corpus?: string;
  steps?: string;
  lr?: string;
  seed?: string;
  hidden?: string;
  samples?: string;
  length?: string;
  chunk?: string;
  sinks?: string;
  recent?: string;
  lambda?: string;
  method?: string;
  poolMb?: string;
  threads?: string;
  quiet?: boolean;
}

/** Everything both trainers read, checked before the model's weights load. */
async function prepare(flags: TrainFlags) {
  const dir = modelDir(flags);
  await checkWritable(flags.out, "--out");
  const ckpt = await openCheckpoint(dir);
  const data: string[] = [];
  for (const f of flags.data ?? []) {
    try {
      data.push(await Deno.readTextFile(f));
    } catch (err) {
      throw fsError(err, f, "--data file");
    }
  }
  const corpus = (await loadCorpus(flags.corpus)).text;
  const mode = flags.quiet ? "quiet" : Deno.stderr.isTerminal() ? "tty" : "plain";
  return { dir, ckpt, data, corpus, status: new StatusLine(mode, { plainEvery: 5000 }) };
}

/** A progress line: phase, count, loss, ETA. */
function progressLine(started: number) {
  let phaseStart = started;
  let phase = "data";
  let last = started;
  return (p: TrainProgress) => {
    if (p.phase !== phase) [phase, phaseStart] = [p.phase, last];
    last = performance.now();
    const elapsed = (last - phaseStart) / 1000;
    const eta = formatSeconds(elapsed / p.done * (p.total - p.done));
    const what = p.phase === "data" ? `samples ${p.done}/${p.total}` : `step ${p.done}/${p.total}`;
    const loss = p.phase === "train" ? ` · loss ${p.loss.toExponential(3)}` : "";
    return [`train ${what}${loss} · ETA ${eta}`];
  };
}

/** Adds `tome train`. */
export function trainCommand(program: Command): void {
  const train = program.command("train").description(
    "train eviction on the frozen model: Locret's retaining heads, DuoAttention's head mask",
  );
  const common = (c: Command) =>
    c.option("-m, --model <dir>", "checkpoint directory (default: $TOME_MODEL)")
      .requiredOption("-o, --out <file>", "file to write")
      .option(
        "--data <files...>",
        "text files to cut extra training samples from (their last 32 tokens are the answer)",
      )
      .option("--corpus <file>", "text to cut needle haystacks from (default: as tome eval)")
      .option("--seed <n>", "random seed", "0")
      .option("--samples <n>", "training samples (each one chunked prefill of --length tokens)")
      .option("--length <n>", "tokens per sample")
      .option("--chunk <n>", "prefill chunk (tokens)")
      .option("-q, --quiet", "no progress on stderr");

  common(train.command("locret"))
    .description("train Locret's retaining heads (safetensors for --retaining-heads)")
    .option("--steps <n>", "optimizer steps", String(LOCRET_DEFAULTS.steps))
    .option("--lr <x>", "peak learning rate (AdamW)", String(LOCRET_DEFAULTS.lr))
    .option("--hidden <n>", "hidden width of each head", String(LOCRET_DEFAULTS.hidden))
    .option(
      "--pool-mb <n>",
      "memory for the training segments of all layers (MiB)",
      String(LOCRET_DEFAULTS.poolBytes / 2 ** 20),
    )
    .addOption(sharedOption("threads"))
    .addHelpText(
      "after",
      "\nThe model runs as its ONNX graph with feature outputs (q/k/v, group-max attention), chunked prefill.\n" +
        "Example:\n  tome train locret -m ./retrieval --out heads.safetensors --hidden 256\n" +
        "  tome eval curve -m ./retrieval --policy locret --retaining-heads heads.safetensors",
    )
    .action(async (flags: TrainFlags) => {
      const o: LocretTrainOptions = {
        ...LOCRET_DEFAULTS,
        steps: intFlag(flags.steps, "--steps")!,
        lr: numberFlag(flags.lr, "--lr", 1e-8, 1)!,
        seed: intFlag(flags.seed, "--seed", 0)!,
        hidden: intFlag(flags.hidden, "--hidden")!,
        poolBytes: intFlag(flags.poolMb, "--pool-mb")! * 2 ** 20,
        samples: intFlag(flags.samples, "--samples") ?? LOCRET_DEFAULTS.samples,
        length: intFlag(flags.length, "--length", 16) ?? LOCRET_DEFAULTS.length,
        chunk: intFlag(flags.chunk, "--chunk") ?? LOCRET_DEFAULTS.chunk,
        warmup: 0,
        corpus: "",
        data: [],
      };
      o.warmup = Math.max(1, Math.round(o.steps / 10));
      const p = await prepare(flags);
      Object.assign(o, { corpus: p.corpus, data: p.data });
      const started = performance.now();
      const threads = intFlag(flags.threads, "--threads");
      const [session, tok] = await Promise.all([openFeatureSession(p.ckpt, threads), loadTokenizer(p.dir)]);
      const line = progressLine(started);
      const show = (x: TrainProgress) => p.status.update(() => line(x), x.done === x.total);
      let pools;
      try {
        pools = await buildPools(p.ckpt.config, (s, chunk) => graphSampleTargets(session, s, chunk), tok, o, show);
      } finally {
        await session.close();
      }
      const dataSeconds = (performance.now() - started) / 1000;
      const t = trainHeads(p.ckpt.config, pools, o, show);
      p.status.clear();
      const seconds = (performance.now() - started) / 1000;
      try {
        await writeHeads(flags.out, t.heads, {
          trained_by: "tome train locret",
          model: p.dir,
          steps: String(o.steps),
          lr: String(o.lr),
          seed: String(o.seed),
          hidden: String(o.hidden),
          samples: String(o.samples),
          sample_tokens: String(o.length),
          chunk: String(o.chunk),
          pool_mb: String(o.poolBytes / 2 ** 20),
          forward: "feature graph (qkv_L, attn_groupmax_L) through onnxruntime, chunked prefill",
          data_files: String(p.data.length),
          target: "CIS: max attention from the answer span's queries (last prompt token on), max over the GQA group",
          loss: "SmoothL1 + 0.0025 adjacent MSE; AdamW betas 0.9/0.95, warmup, cosine, clip 0.5",
          loss_first: t.firstLoss.toExponential(4),
          loss_last: t.lastLoss.toExponential(4),
          seconds: seconds.toFixed(1),
        });
      } catch (err) {
        throw err instanceof TomeError ? err : new TomeError("output", `--out ${flags.out}: ${(err as Error).message}`);
      }
      if (!flags.quiet) {
        note(
          `retaining heads written to ${flags.out}: loss ${t.firstLoss.toExponential(3)} → ${
            t.lastLoss.toExponential(3)
          } over ${o.steps} steps, ${t.tokens} tokens in the pool; data ${formatSeconds(dataSeconds)}, total ${
            formatSeconds(seconds)
          }`,
        );
      }
    });

  common(train.command("duo"))
    .description("train DuoAttention's per-head gates α (TSV for --duo-mask)")
    .option("--sinks <n>", "entries a streaming head keeps at the start", String(DUO_DEFAULTS.sinks))
    .option("--recent <n>", "entries a streaming head keeps at the end", String(DUO_DEFAULTS.recent))
    .option("--lambda <x>", "gates: L1 penalty λ on Σα per layer", String(DUO_DEFAULTS.lambda))
    .option("--steps <n>", "gates: projected gradient steps per layer (at most)", String(DUO_DEFAULTS.steps))
    .option(
      "--method <m>",
      "gates (mixed attention + L1, layer by layer) or ablate (answer KL when a head alone streams)",
      "gates",
    )
    .addHelpText(
      "after",
      "\nThe model runs as tome's reference forward (plain loops): meant for small models.\n" +
        "Example:\n  tome train duo -m ./retrieval --out mask.tsv --samples 8 --length 1024\n" +
        "  tome eval niah -m ./retrieval --policy duo --duo-mask mask.tsv --duo-sparsity 0.5",
    )
    .action(async (flags: TrainFlags) => {
      if (flags.method !== "gates" && flags.method !== "ablate") {
        throw new TomeError("usage", `--method must be gates or ablate, got ${flags.method}`);
      }
      const o = {
        ...DUO_DEFAULTS,
        seed: intFlag(flags.seed, "--seed", 0)!,
        samples: intFlag(flags.samples, "--samples") ?? DUO_DEFAULTS.samples,
        length: intFlag(flags.length, "--length", 16) ?? DUO_DEFAULTS.length,
        chunk: intFlag(flags.chunk, "--chunk") ?? DUO_DEFAULTS.chunk,
        sinks: intFlag(flags.sinks, "--sinks", 0)!,
        recent: intFlag(flags.recent, "--recent", 0)!,
        lambda: numberFlag(flags.lambda, "--lambda", 0, 1e6)!,
        steps: intFlag(flags.steps, "--steps")!,
        corpus: "",
        data: [] as string[],
      };
      const p = await prepare(flags);
      Object.assign(o, { corpus: p.corpus, data: p.data });
      const started = performance.now();
      const [weights, tok] = await Promise.all([loadWeights(p.ckpt), loadTokenizer(p.dir)]);
      const line = progressLine(started);
      const show = (done: number, total: number) =>
        p.status.update(() => line({ phase: "data", done, total }), done === total);
      const where = `model ${p.dir}; ${o.samples} samples of ${o.length} tokens; seed ${o.seed}`;
      const rows = (m: number[][]) => m.map((row) => row.map((v) => v.toExponential(3)).join(" ")).join(" | ");
      let text: string;
      if (flags.method === "ablate") {
        const r = measureDuo(p.ckpt.config, weights, tok, o, show);
        text = duoTsv(r.alpha, [
          `tome train duo --method ablate: α = mean answer KL when the head alone streams (${o.sinks} sinks + ${o.recent} recent), scaled by the largest`,
          where,
          `KL per head: ${rows(r.deviation)}`,
        ]);
      } else {
        const data = runSamples(p.ckpt.config, tok, o);
        const r = trainDuo(p.ckpt.config, weights, data, o, (done) => show(done, o.samples));
        text = duoTsv(r.alpha, [
          `tome train duo: DuoAttention gates (arXiv 2410.10819), α·full + (1−α)·streaming (${o.sinks} sinks + ${o.recent} recent), trained layer by layer: ‖o_proj(mix) − o_proj(full)‖² / ‖o_proj(full)‖² over the answer window + λ·Σα, λ = ${o.lambda}`,
          where,
          `streaming cost per head alone (G_kk / E): ${rows(r.cost)}`,
          `loss per layer: ${r.loss.map((v) => v.toExponential(3)).join(" ")}`,
        ]);
      }
      p.status.clear();
      try {
        await Deno.writeTextFile(flags.out, text);
      } catch (err) {
        throw new TomeError("output", `--out ${flags.out}: ${(err as Error).message}`);
      }
      if (!flags.quiet) {
        note(`head mask written to ${flags.out} (${formatSeconds((performance.now() - started) / 1000)})`);
      }
    });
}
