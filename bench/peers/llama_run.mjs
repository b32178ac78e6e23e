// Node 20 side of bench/peers/peers.ts: llama.cpp (node-llama-cpp 3.22.1, its
// prebuilt CPU binaries) timed, measured and asked for needles. One run per
// process, so the peak RSS printed (VmHWM) is this run's alone.
//
//   node bench/peers/llama_run.mjs speed MODEL.gguf IDS.json DECODE THREADS
//     n_ctx = the prompt + DECODE (+ 16); prefill of the prompt with batch 512, then DECODE greedy tokens.
//     Prints {prefill_s, decode_s, decoded, n_ctx, peak_rss} or {error} when the context cannot be allocated.
//   node bench/peers/llama_run.mjs generate MODEL.gguf PROMPTS.json N_CTX N_KEEP MAX_TOKENS THREADS OUT.json
//     Each prompt (already truncated by the caller to at most N_CTX tokens) is evaluated in a fresh sequence of
//     N_CTX cells and continued greedily for MAX_TOKENS tokens. When the cache is full before a generated token
//     goes in, it shifts as Ollama's runner does (ShiftCacheSlot): discard = (N_CTX - N_KEEP) / 2 - free cells,
//     the cells [N_KEEP, N_KEEP + discard) are removed and the later ones moved down (RoPE-shifted).
//     Writes [[generated ids], …] to OUT.json.
//
// NODE_LLAMA_CPP_DIR: a directory whose node_modules holds node-llama-cpp@3.22.1.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [mode, modelPath, ...rest] = process.argv.slice(2);
const entry = join(process.env.NODE_LLAMA_CPP_DIR, "node_modules", "node-llama-cpp", "dist", "index.js");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);

/** Peak resident set of this process (VmHWM), bytes. */
function peakRss() {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync("/proc/self/status", "utf8"));
  return m ? Number(m[1]) * 1024 : null;
}

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });

async function context(size, threads) {
  return await model.createContext({
    contextSize: size,
    batchSize: 512,
    threads: { ideal: threads, min: threads },
    flashAttention: false,
    sequences: 1,
  });
}

const GREEDY = { generateNext: { token: true, options: { temperature: 0 } } };

if (mode === "speed") {
  const [idsPath, decodeArg, threadsArg] = rest;
  const ids = JSON.parse(readFileSync(idsPath, "utf8"));
  const decode = Number(decodeArg);
  let ctx;
  try {
    ctx = await context(ids.length + decode + 16, Number(threadsArg));
  } catch (e) {
    console.log(JSON.stringify({ error: `cannot allocate n_ctx ${ids.length + decode + 16}: ${e.message}` }));
    process.exit(0);
  }
  const seq = ctx.getSequence();
  const t0 = performance.now();
  let first = 0, n = 0;
  for await (const _ of seq.evaluate(ids, { temperature: 0 })) {
    if (n === 0) first = performance.now();
    if (++n > decode) break;
  }
  const end = performance.now();
  console.log(JSON.stringify({
    prefill_s: (first - t0) / 1000,
    decode_s: (end - first) / 1000,
    decoded: n - 1,
    n_ctx: ctx.contextSize,
    peak_rss: peakRss(),
  }));
  await ctx.dispose();
} else if (mode === "generate") {
  const [promptsPath, nCtxArg, nKeepArg, maxArg, threadsArg, outPath] = rest;
  const prompts = JSON.parse(readFileSync(promptsPath, "utf8"));
  const nCtx = Number(nCtxArg), nKeep = Number(nKeepArg), max = Number(maxArg);
  const ctx = await context(nCtx, Number(threadsArg));
  if (ctx.contextSize !== nCtx) throw new Error(`asked for n_ctx ${nCtx}, got ${ctx.contextSize}`);
  const answers = [];
  let shifts = 0;
  for (const prompt of prompts) {
    if (prompt.length > nCtx) throw new Error(`prompt of ${prompt.length} tokens over n_ctx ${nCtx}`);
    const seq = ctx.getSequence();
    const out = [];
    const step = async (items) => {
      const r = await seq.controlledEvaluate(items);
      return r[items.length - 1].next.token;
    };
    let next = await step([...prompt.slice(0, -1), [prompt.at(-1), GREEDY]]);
    while (out.length < max) {
      out.push(next);
      if (out.length === max) break;
      if (seq.nextTokenIndex + 1 > nCtx) {
        // Ollama's ShiftCacheSlot: free half of what lies after the kept head
        const targetFree = Math.max(1, Math.floor((nCtx - nKeep) / 2));
        const discard = Math.max(0, targetFree - (nCtx - seq.nextTokenIndex));
        await seq.eraseContextTokenRanges([{ start: nKeep, end: nKeep + discard }]);
        shifts++;
      }
      next = await step([[next, GREEDY]]);
    }
    answers.push(out);
    seq.dispose();
  }
  writeFileSync(outPath, JSON.stringify(answers));
  console.log(JSON.stringify({ prompts: prompts.length, shifts }));
  await ctx.dispose();
} else {
  throw new Error(`unknown mode ${mode}`);
}
await model.dispose();
await llama.dispose();
