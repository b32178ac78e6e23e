/**
 * Runs fuzz cases for the harness: the first message names the target and a
 * scratch directory; each later one carries a case's bytes. Replies with the
 * outcome: accepted with the target's result, or rejected with the error's
 * name, TomeError kind and message.
 */
import { TomeError } from "../../core/errors.ts";

/** What a target module exports for the worker. */
export interface CaseRunner {
  setup(dir: string): Promise<void>;
  runCase(input: Uint8Array, dir: string): Promise<unknown>;
}

const TARGETS: Record<string, () => Promise<CaseRunner>> = {
  safetensors: () => import("./safetensors_case.ts"),
  config: () => import("./config_case.ts"),
  state: () => import("./state_case.ts"),
  chat_template: () => import("./chat_template_case.ts"),
};

/** The worker's global scope (the project is type-checked with the window's types). */
const scope = self as unknown as {
  onmessage: (e: MessageEvent) => void;
  postMessage(message: unknown): void;
};

let runner: CaseRunner | null = null;
let dir = "";

scope.onmessage = async (e: MessageEvent) => {
  if (!runner) {
    dir = e.data.dir;
    runner = await TARGETS[e.data.target]();
    await runner.setup(dir);
    scope.postMessage({ ready: true });
    return;
  }
  try {
    const result = await runner.runCase(e.data.input, dir);
    scope.postMessage({ accepted: true, result });
  } catch (err) {
    const name = err instanceof TomeError ? "TomeError" : err instanceof Error ? err.constructor.name : typeof err;
    scope.postMessage({
      accepted: false,
      name,
      kind: err instanceof TomeError ? err.kind : undefined,
      message: err instanceof Error ? err.message : String(err),
    });
  }
};
