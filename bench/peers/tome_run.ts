/**
 * tome's side of one speed-and-memory run of bench/peers/peers.ts, in a
 * process of its own so the peak RSS it prints (VmHWM) is this run's alone:
 * chunked prefill of the prompt (tome's default chunk for the weights unless CHUNK: 512, or 256 at q8/q4), then
 * DECODE greedy tokens.
 *
 *   deno run -A --v8-flags=--optimize-for-size bench/peers/tome_run.ts MODEL_DIR IDS.json POLICY BUDGET DECODE THREADS [WEIGHTS] [CHUNK]
 *
 * Prints {prefill_s, decode_s, decoded, kv_peak_bytes, peak_rss}. WEIGHTS (f32, q8, …) is passed to
 * loadModel only when this checkout's graph builder knows weight types (`resolveWeights` exported).
 */
import { generate, loadModel, read } from "../../core/mod.ts";
import { rss } from "../../core/meter/rss.ts";
import * as decoder from "../../core/model/onnx/decoder.ts";

const [dir, idsPath, policy, budget, decode, threads, weights, chunk] = Deno.args;
const ids: number[] = JSON.parse(await Deno.readTextFile(idsPath));
// f16 KV: the CLI's default, and llama.cpp's
const opts: Record<string, unknown> = { threads: Number(threads), kvDtype: "float16" };
if (weights && "resolveWeights" in decoder) opts.weights = weights;
else if (weights && weights !== "f32") throw new Error(`this checkout has no weight types (asked for ${weights})`);
const model = await loadModel(dir, opts as Parameters<typeof loadModel>[1]);
// the last 8 prompt tokens go in as the suffix, so that prefill covers the prompt less 8 and decoding starts there
const suffix = ids.slice(-8);
const t0 = performance.now();
const state = await read({ ids: ids.slice(0, -8) }, {
  model,
  policy,
  budget: Number(budget),
  chunk: chunk ? Number(chunk) : undefined,
  question: suffix,
});
let first = 0, n = 0;
for await (
  const _ of generate(state, { suffix, maxTokens: Number(decode) + 1, sampling: { temperature: 0 }, eos: [] })
) {
  if (n++ === 0) first = performance.now();
}
const end = performance.now();
const s = state.meter.summary();
console.log(JSON.stringify({
  chunk: state.chunk,
  prefill_s: (first - t0) / 1000,
  decode_s: (end - first) / 1000,
  decoded: s.generatedTokens - 1,
  kv_peak_bytes: s.kvPeakBytes,
  peak_rss: rss().peak,
}));
await model.session.close();
