// Node 20 side of bench/peers/agreement.ts: loads a GGUF with node-llama-cpp
// (llama.cpp's prebuilt CPU binaries), teacher-forces the given token ids and
// writes the raw logits of every position as float32 [S, vocab].
//
//   node bench/peers/llama_logits.mjs MODEL.gguf IDS.json OUT.f32 [f32|f16 KV]
//   node bench/peers/llama_logits.mjs MODEL.gguf --tokenize TEXT.txt OUT.json
//     (llama.cpp's tokenization of a text, no BOS, special tokens as text)
//
// NODE_LLAMA_CPP_DIR: a directory whose node_modules holds node-llama-cpp@3.22.1.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modelPath, idsPath, outPath, kv = "f32"] = process.argv.slice(2);
const dir = process.env.NODE_LLAMA_CPP_DIR;
const entry = join(dir, "node_modules", "node-llama-cpp", "dist", "index.js");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
if (idsPath === "--tokenize") {
  const tokens = model.tokenize(readFileSync(outPath, "utf8"), false);
  writeFileSync(kv, JSON.stringify(Array.from(tokens)));
  console.log(JSON.stringify({ tokens: tokens.length }));
  await model.dispose();
  await llama.dispose();
  process.exit(0);
}
const ids = JSON.parse(readFileSync(idsPath, "utf8"));
const kvType = kv === "f32" ? "F32" : "F16";
const context = await model.createContext({
  contextSize: Math.max(256, ids.length + 16),
  batchSize: 512,
  flashAttention: false,
  experimentalKvCacheKeyType: kvType,
  experimentalKvCacheValueType: kvType,
});
const seq = context.getSequence();
const results = await seq.controlledEvaluate(ids.map((t) => [t, { generateNext: { logits: true } }]));
const V = results[0].next.logits.size;
const out = new Float32Array(ids.length * V);
results.forEach((r, s) => {
  for (const [token, logit] of r.next.logits) out[s * V + token] = logit;
});
writeFileSync(outPath, Buffer.from(out.buffer));
console.log(JSON.stringify({ positions: ids.length, vocab: V }));
await context.dispose();
await model.dispose();
await llama.dispose();
