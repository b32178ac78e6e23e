/** What `tome estimate` prints: the prediction as a JSON object (tests/schemas/estimate.schema.json) or as text. */
import type { KvPrediction } from "../../core/engine/estimate.ts";
import { formatBytes, formatCount, formatSeconds } from "../progress.ts";
import { round } from "../output.ts";
import type { MethodJson } from "../method.ts";

/** A run's prediction, unrounded: the input, the resolved run, KV exactly, memory and time from the sample. */
export interface Estimate {
  input: { bytes: number; files: number };
  tokens: number;
  model: string;
  device: string;
  policy: string;
  /** How the run keeps its KV: policy, merge, thin keys, MiKV's low tier. */
  method: MethodJson;
  budget: number;
  chunk: number;
  positions: "original" | "compact";
  kvDtype: "f16" | "f32";
  maxTokens: number;
  kv: KvPrediction;
  peakRssBytes: number;
  seconds: { load: number; tokenize: number; prefill: number; decode: number };
  sample: { tokens: number; prefillTokensPerSecond: number; decodeTokensPerSecond: number };
}

const totalSeconds = (e: Estimate) => round(e.seconds.load + e.seconds.prefill + e.seconds.decode);

/** The `--json` object. */
export function estimateJson(e: Estimate) {
  return {
    input: e.input,
    tokens: e.tokens,
    chunks: e.kv.chunks,
    model: e.model,
    device: e.device,
    policy: e.policy,
    method: e.method,
    budget: e.budget,
    chunk: e.chunk,
    positions: e.positions,
    kv_dtype: e.kvDtype,
    max_tokens: e.maxTokens,
    predicted: {
      kv_peak_bytes: e.kv.peakBytes,
      kv_prefill_peak_bytes: e.kv.prefillPeakBytes,
      kv_after_read_bytes: e.kv.afterReadBytes,
      kv_high_peak_bytes: e.kv.high.peakBytes,
      kv_low_peak_bytes: e.kv.low.peakBytes,
      kv_high_after_read_bytes: e.kv.high.afterReadBytes,
      kv_low_after_read_bytes: e.kv.low.afterReadBytes,
      kv_full_bytes: e.kv.fullBytes,
      peak_rss_bytes: e.peakRssBytes,
      seconds: {
        load: round(e.seconds.load),
        tokenize: round(e.seconds.tokenize),
        prefill: round(e.seconds.prefill),
        decode: round(e.seconds.decode),
        total: totalSeconds(e),
      },
    },
    sample: {
      tokens: e.sample.tokens,
      prefill_tok_s: round(e.sample.prefillTokensPerSecond, 1),
      decode_tok_s: round(e.sample.decodeTokensPerSecond, 2),
    },
  };
}

/** The text report: one labelled row per figure. */
export function estimateText(e: Estimate): string {
  const { kv, seconds: s, sample } = e;
  const row = (k: string, v: string) => `${k.padEnd(18)}${v}`;
  return [
    row(
      "input",
      `${formatBytes(e.input.bytes)} in ${e.input.files} file(s): ${
        formatCount(e.tokens)
      } tokens, ${kv.chunks} chunks of ${e.chunk}`,
    ),
    row("policy", `${e.policy}, budget ${e.budget} entries per layer and head, ${e.positions} positions, ${e.device}`),
    ...methodRows(e.method),
    row(
      "KV peak",
      `${formatBytes(kv.peakBytes)} (${kv.peakBytes} bytes; reading ${
        formatBytes(kv.prefillPeakBytes)
      }, answer up to ${e.maxTokens} tokens)`,
    ),
    ...(e.method.low_tier
      ? [
        row(
          "KV per tier",
          `high peak ${formatBytes(kv.high.peakBytes)} (${kv.high.peakBytes} bytes), ${e.method.low_tier.tier} peak ${
            formatBytes(kv.low.peakBytes)
          } (${kv.low.peakBytes} bytes)`,
        ),
      ]
      : []),
    row("KV full cache", `${formatBytes(kv.fullBytes)} (${(kv.fullBytes / kv.peakBytes).toFixed(0)}× the peak)`),
    row("peak RSS", `~${formatBytes(e.peakRssBytes)} (measured on a ${formatCount(sample.tokens)}-token sample)`),
    row(
      "time",
      `~${formatSeconds(totalSeconds(e))}: load ${formatSeconds(s.load)}, prefill ${formatSeconds(s.prefill)} at ${
        formatCount(sample.prefillTokensPerSecond)
      } tok/s, answer ${formatSeconds(s.decode)} at ${sample.decodeTokensPerSecond.toFixed(1)} tok/s`,
    ),
  ].join("\n") + "\n";

  /** What the run does besides dropping: a row each for merging, thin keys and the low tier (none when it only drops). */
  function methodRows(m: MethodJson): string[] {
    return [
      ...(m.merge ? [row("merge", m.merge)] : []),
      ...(m.key_channels
        ? [
          row(
            "thin keys",
            `${m.key_channels.channels} of ${m.key_channels.head_dim} key channels, the newest ${m.key_channels.window} entries per head whole`,
          ),
        ]
        : []),
      ...(m.low_tier
        ? [
          row(
            "low tier",
            `${m.low_tier.tier}, ${m.low_tier.budget} entries per layer and head of ${m.low_tier.entry_bytes} bytes`,
          ),
        ]
        : []),
    ];
  }
}
