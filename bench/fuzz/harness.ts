/**
 * The fuzzing harness: cases made by a target's mutator run one at a time in a
 * Worker under a watchdog; each outcome is judged against the target's own
 * independent checker.
 *
 * A case passes when the code under test accepts it and the checker finds it
 * valid (and reads it the same way), or rejects it with a `TomeError` of the
 * expected kind. It fails on any other error, a hang (the watchdog terminates
 * the worker and starts a fresh one), or an accepted input the checker finds
 * invalid. Rejections of inputs the checker finds valid are counted apart.
 */
import { join } from "node:path";
import { uniform } from "../../kernels/random.ts";

/** What the worker reports for one case. */
export type Outcome =
  | { accepted: true; result: unknown }
  | { accepted: false; name: string; kind?: string; message: string };

/** A fuzz target: how to make cases, where they run, how to judge them. */
export interface FuzzTarget {
  name: string;
  /** The `TomeError` kind a rejection must carry. */
  kind: string;
  /** Makes the `i`-th case from the generator (deterministic for a seed). */
  mutate(next: () => number, i: number): Uint8Array;
  /**
   * Judges an outcome with the target's independent checker: null when it is
   * right, else what is wrong. `"rejected-valid"` marks a rejection of an input
   * the checker finds valid.
   */
  judge(input: Uint8Array, outcome: Outcome): string | null;
}

/** One failing case, kept for the report (input base64, cut at 4 KiB). */
export interface Failure {
  case: number;
  problem: string;
  input: string;
}

/** The result of a fuzzing run. */
export interface FuzzSummary {
  target: string;
  seed: number;
  cases: number;
  accepted: number;
  rejected: number;
  rejectedValid: number;
  hangs: number;
  failures: number;
  seconds: number;
  /** Distinct rejection messages' first words, with counts (what the fuzzer reached). */
  reasons: Record<string, number>;
  examples: Failure[];
}

/** Runs `cases` cases of `target` in a worker with a watchdog of `timeoutMs` per case. */
export async function runFuzz(
  target: FuzzTarget,
  opts: { cases: number; seed: number; timeoutMs?: number; onCase?: (i: number) => void },
): Promise<FuzzSummary> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const next = uniform(opts.seed);
  const t0 = performance.now();
  const s: FuzzSummary = {
    target: target.name,
    seed: opts.seed,
    cases: 0,
    accepted: 0,
    rejected: 0,
    rejectedValid: 0,
    hangs: 0,
    failures: 0,
    seconds: 0,
    reasons: {},
    examples: [],
  };
  const fail = (i: number, input: Uint8Array, problem: string) => {
    s.failures++;
    if (s.examples.length < 20) s.examples.push({ case: i, problem, input: base64(input.subarray(0, 4096)) });
  };
  const root = await Deno.makeTempDir({ prefix: `tome-fuzz-${target.name}-` });
  let workers = 0;
  const start = () => FuzzWorker.start(target.name, join(root, String(workers++)));
  let worker = await start();
  try {
    for (let i = 0; i < opts.cases; i++) {
      const input = target.mutate(next, i);
      s.cases++;
      const outcome = await worker.run(input, timeoutMs);
      if (outcome === "hang") {
        s.hangs++;
        fail(i, input, `no answer within ${timeoutMs} ms`);
        worker.stop();
        worker = await start();
        continue;
      }
      if (outcome.accepted) s.accepted++;
      else {
        s.rejected++;
        const reason = reasonOf(outcome.message);
        s.reasons[reason] = (s.reasons[reason] ?? 0) + 1;
      }
      let problem: string | null;
      if (!outcome.accepted && (outcome.name !== "TomeError" || outcome.kind !== target.kind)) {
        problem = `rejected with ${outcome.name}${outcome.kind ? ` (${outcome.kind})` : ""}: ${outcome.message}`;
      } else problem = target.judge(input, outcome);
      if (problem === "rejected-valid") {
        s.rejectedValid++;
        if (s.examples.length < 20) {
          s.examples.push({
            case: i,
            problem: `rejected an input the checker finds valid: ${(outcome as { message: string }).message}`,
            input: base64(input.subarray(0, 4096)),
          });
        }
      } else if (problem) fail(i, input, problem);
      opts.onCase?.(i);
    }
  } finally {
    worker.stop();
    await Deno.remove(root, { recursive: true }).catch(() => {});
  }
  s.seconds = Math.round((performance.now() - t0) / 10) / 100;
  return s;
}

/** The first words of a rejection message, with paths and numbers taken out: what kind of defect it names. */
function reasonOf(message: string): string {
  const afterPath = message.replace(/^\S*\/\S*?: /, "").replace(/\b(tensors?|key|weights file) ("[^"]*"|\S+)/g, "$1 X")
    .replace(/ and X/, "");
  return afterPath.replace(/"[^"]*"/g, "…").replace(/-?\d[\d.e+]*/g, "N").split(/[,;(]/)[0].slice(0, 60).trim();
}

function base64(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

/** A worker that runs one target's cases, one at a time. */
class FuzzWorker {
  private constructor(private worker: Worker) {}

  static async start(target: string, dir: string): Promise<FuzzWorker> {
    await Deno.mkdir(dir, { recursive: true });
    const worker = new Worker(new URL("./worker.ts", import.meta.url).href, { type: "module" });
    return new Promise((resolve, reject) => {
      worker.onmessage = (e) => {
        if (e.data?.ready) resolve(new FuzzWorker(worker));
        else reject(new Error(`fuzz worker did not start: ${JSON.stringify(e.data)}`));
      };
      worker.onerror = (e) => {
        e.preventDefault();
        reject(new Error(`fuzz worker did not start: ${e.message}`));
      };
      worker.postMessage({ target, dir });
    });
  }

  run(input: Uint8Array, timeoutMs: number): Promise<Outcome | "hang"> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve("hang"), timeoutMs);
      this.worker.onmessage = (e) => {
        clearTimeout(timer);
        resolve(e.data as Outcome);
      };
      this.worker.onerror = (e) => {
        // an error escaping the worker's handler: a crash of the case
        e.preventDefault();
        clearTimeout(timer);
        resolve({ accepted: false, name: "WorkerError", message: e.message });
      };
      this.worker.postMessage({ input });
    });
  }

  stop(): void {
    this.worker.terminate();
  }
}

/** Command line of a fuzzer: `--cases N --seed S --timeout MS --out DIR`; prints one line, writes JSON. */
export async function fuzzMain(target: FuzzTarget, args: string[]): Promise<FuzzSummary> {
  const flag = (name: string, d: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && i + 1 < args.length ? args[i + 1] : d;
  };
  const cases = Number(flag("cases", "10000"));
  const seed = Number(flag("seed", "1"));
  const timeoutMs = Number(flag("timeout", "5000"));
  const outDir = flag("out", join(new URL("../results/fuzz", import.meta.url).pathname));
  const s = await runFuzz(target, { cases, seed, timeoutMs });
  await Deno.mkdir(outDir, { recursive: true });
  const file = join(outDir, `${target.name}.json`);
  await Deno.writeTextFile(
    file,
    JSON.stringify({ ...s, command: `deno run -A bench/fuzz/${target.name}.ts ${args.join(" ")}`.trim() }, null, 2) +
      "\n",
  );
  console.log(
    `fuzz ${s.target}: ${s.cases} cases (seed ${s.seed}) in ${s.seconds}s: ${s.accepted} accepted, ${s.rejected} rejected` +
      ` (${s.rejectedValid} valid), ${s.hangs} hangs, ${s.failures} failures -> ${file}`,
  );
  return s;
}
