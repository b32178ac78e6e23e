import type { Command } from "commander";
import { gcStates, listStates, removeState, stateCacheDir, stateCacheMax } from "../../core/state/cache.ts";
import { parseSize } from "../../core/engine/budget.ts";
import { formatBytes } from "../progress.ts";
import { note, writeStdout } from "../output.ts";

/** `tome cache ls|rm|gc`: the reading states `--cache` keeps. */
export function cacheCommand(program: Command): void {
  const cache = program.command("cache").description(
    "the reading states --cache keeps under the cache directory: list, remove, trim to a size",
  );
  cache.command("ls")
    .description("list cached states, most recently used first")
    .option("--json", "print JSON")
    .action(async (flags: { json?: boolean }) => {
      const all = await listStates();
      if (flags.json) {
        return void await writeStdout(
          JSON.stringify(all.map((s) => ({
            key: s.key,
            path: s.path,
            bytes: s.bytes,
            used: s.used.toISOString(),
            policy: s.header?.run.policy ?? null,
            budget: s.header?.run.budget ?? null,
            sources: s.header?.input.sources ?? null,
            questions: s.header?.questions ?? null,
          }))) + "\n",
        );
      }
      for (const s of all) {
        const h = s.header;
        await writeStdout(
          `${s.key.slice(0, 12)}  ${formatBytes(s.bytes).padStart(10)}  ${s.used.toISOString().slice(0, 19)}  ${
            h ? `${h.run.policy} b=${h.run.budget}  ${h.input.sources.join(", ")}` : "(unreadable)"
          }\n`,
        );
      }
      note(`${all.length} state(s), ${formatBytes(all.reduce((a, s) => a + s.bytes, 0))} in ${stateCacheDir()}`);
    });
  cache.command("rm")
    .description("remove cached states by key (a prefix is enough), or all of them")
    .argument("[keys...]", "keys from `tome cache ls`")
    .option("--all", "remove every cached state")
    .action(async (keys: string[], flags: { all?: boolean }) => {
      if (flags.all) {
        const removed = await gcStates(0);
        return note(`removed ${removed.length} state(s)`);
      }
      for (const k of keys) note(`removed ${await removeState(k)}`);
    });
  cache.command("gc")
    .description("remove the least recently used states beyond a size (default: $TOME_STATE_CACHE_MAX or 4GiB)")
    .option("--max-size <size>", "keep at most this much, e.g. 2GiB")
    .action(async (flags: { maxSize?: string }) => {
      const max = flags.maxSize ? parseSize(flags.maxSize, "--max-size") : stateCacheMax();
      const removed = await gcStates(max);
      note(`removed ${removed.length} state(s), ${formatBytes(removed.reduce((a, s) => a + s.bytes, 0))}`);
    });
}
