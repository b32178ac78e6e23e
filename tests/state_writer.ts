/** A child process for tests/state_test.ts: reads a document, then saves its state over and over until killed. */
import { loadModel, read, saveState } from "../core/mod.ts";

const [model, target, info] = Deno.args;
const m = await loadModel(model, { kvDtype: "float16" });
const ids = Array.from({ length: 3000 }, (_, i) => (i * 7) % m.config.vocab);
const s = await read({ ids }, { model: m, policy: "full", chunk: 500 });
console.log("ready");
while (true) await saveState(target, m, s.sequence, JSON.parse(info));
