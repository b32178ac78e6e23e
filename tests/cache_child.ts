/**
 * A child process for tests/cache_test.ts: opens a checkpoint and gets its
 * graph from the cache (`$TOME_CACHE`), as a tome run does.
 *
 *   cache_child.ts MODEL_DIR [--barrier FILE] [--on-signal]
 *
 * Prints `ready` once the checkpoint is open, waits for FILE to exist when
 * given, prints `building`, then the result as JSON. `--on-signal` removes the
 * partial build and exits 143 on SIGTERM, as the CLI does.
 */
import { TomeError } from "../core/errors.ts";
import { graphFor } from "../core/model/cache.ts";
import { openCheckpoint } from "../core/model/checkpoint.ts";
import { removePartialBuilds } from "../core/model/lock.ts";
import { DEFAULT_GRAPH_OPTIONS } from "../core/model/onnx/decoder.ts";

const [model, ...rest] = Deno.args;
const barrier = rest.includes("--barrier") ? rest[rest.indexOf("--barrier") + 1] : undefined;
if (rest.includes("--on-signal")) {
  Deno.addSignalListener("SIGTERM", () => {
    removePartialBuilds();
    Deno.exit(143);
  });
}
const say = (line: string) => Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
try {
  const ckpt = await openCheckpoint(model);
  say("ready");
  while (barrier && !(await Deno.stat(barrier).then(() => true, () => false))) {
    await new Promise((r) => setTimeout(r, 5));
  }
  say("building");
  const t0 = performance.now();
  const result = await graphFor(ckpt, DEFAULT_GRAPH_OPTIONS);
  say(JSON.stringify({ ...result, ms: performance.now() - t0 }));
} catch (err) {
  if (!(err instanceof TomeError)) throw err;
  console.error(`tome: ${err.message}`);
  Deno.exit(err.code);
}
