/**
 * Budgets in bytes (core/engine/resolve.ts): a size is the KV memory the whole
 * cache may hold after each step, whatever the method, so drop-only, merging,
 * thin keys and a low tier compare at equal bytes. The oracle is the meter
 * after a real read: the bytes the stores hold (high and low tier, thin keys at
 * their width) must be within the size and short of it by less than one more
 * entry of each tier.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { kvBytesPerToken } from "../core/model/config.ts";
import { loadModel, read } from "../core/mod.ts";
import { resolveRun } from "../core/engine/resolve.ts";
import { TomeError } from "../core/errors.ts";
import { makeTinyModels } from "./model_fixtures.ts";

const root = await Deno.makeTempDir({ prefix: "tome-byte-budget-test-" });
Deno.env.set("TOME_CACHE", join(root, "cache"));
const models = await makeTinyModels(join(root, "models"));

Deno.test("byte budgets: every method holds at most the size, and less than one entry per tier short of it", async (t) => {
  const dir = models.get("llama")!;
  // thin keys need ThinK's query factor from the graph; drop-only and merging runs ignore it
  const plain = await loadModel(dir, { positions: "original", kvDtype: "float16", queryEnergy: true });
  const tiered = await loadModel(dir, { positions: "original", kvDtype: "float16", lowTier: "int4" });
  try {
    const c = plain.config;
    const d = c.headDim, slots = c.layers * c.kvHeads;
    const tokenBytes = kvBytesPerToken(c, 2);
    // 150 whole entries and an odd remainder
    const size = 150 * tokenBytes + 37;
    const ids = Array.from({ length: 900 }, (_, i) => (i * 13 + 5) % c.vocab);
    const cases = [
      { name: "drop", model: plain, o: {}, slack: tokenBytes },
      { name: "d2o", model: plain, o: { merge: "d2o" }, slack: tokenBytes },
      // a thin entry: half the key channels and the whole value
      { name: "think 0.5", model: plain, o: { keyChannels: 0.5 }, slack: (tokenBytes * (d / 2 + d)) / (2 * d) },
      // with a question patch no key stays whole
      {
        name: "think 0.5, question",
        model: plain,
        o: { keyChannels: 0.5, question: [7, 8, 9] },
        slack: (tokenBytes * (d / 2 + d)) / (2 * d),
      },
      {
        name: "int4 low tier",
        model: tiered,
        o: { keepEvicted: "int4" as const },
        slack: tokenBytes + slots * 2 * (d / 2 + 2 * 2 * (d / Math.min(d, 32))),
      },
    ];
    for (const k of cases) {
      await t.step(k.name, async () => {
        const state = await read({ ids }, { model: k.model, policy: "snapkv", budget: `${size}B`, chunk: 64, ...k.o });
        const held = state.meter.summary().kvBytes;
        assert.ok(held <= size, `${k.name}: holds ${held} B, over the ${size} B budget`);
        assert.ok(size - held < k.slack, `${k.name}: holds ${held} B, ${size - held} B short of ${size} B`);
        if (k.o.keepEvicted) {
          const low = state.sequence.low!.bytes();
          // the low tier gets half the bytes
          assert.ok(low <= size / 2 && size / 2 - low < slots * state.run.lowTier!.entryBytes, `low tier ${low} B`);
          // low entries are held and attended: the entry counts (kept, footprint) include them
          const entries = state.sequence.store.entries() + state.sequence.low!.entries();
          assert.equal(state.meter.summary().kept * slots, entries, "kept entries, both tiers");
        }
      });
    }
  } finally {
    await plain.session.close();
    await tiered.session.close();
  }
});

Deno.test("byte budgets: a count stays the high tier's entries; sizes too small for one entry are usage errors", async () => {
  const m = await loadModel(models.get("llama")!, { positions: "original" });
  try {
    const c = m.config;
    const base = { policy: "snapkv", positions: "original" as const, kvDtype: "float16" as const };
    const tokenBytes = kvBytesPerToken(c, 2);
    const count = await resolveRun(c, { ...base, budget: 64, keepEvicted: "int4" });
    assert.equal(count.budget, 64);
    // the low tier by default fills as many bytes as the high tier
    const lowBytes = count.lowTier!.budget * c.layers * c.kvHeads * count.lowTier!.entryBytes;
    assert.ok(
      lowBytes <= 64 * tokenBytes && 64 * tokenBytes - lowBytes < c.layers * c.kvHeads * count.lowTier!.entryBytes,
    );
    // a size with an explicit low budget: the high tier gets the rest
    const split = await resolveRun(c, { ...base, budget: `${100 * tokenBytes}B`, keepEvicted: "int4", lowBudget: 10 });
    const rest = 100 * tokenBytes - 10 * c.layers * c.kvHeads * split.lowTier!.entryBytes;
    assert.equal(split.budget, Math.floor(rest / tokenBytes));
    const err = await resolveRun(c, { ...base, budget: `${tokenBytes}B`, keepEvicted: "int4", lowBudget: "1MiB" })
      .catch((e) => e);
    assert.ok(err instanceof TomeError && err.kind === "usage" && /at least one entry/.test(err.message), String(err));
  } finally {
    await m.session.close();
  }
});

Deno.test({
  name: "cleanup byte budget test files",
  fn: () => Deno.remove(root, { recursive: true }),
  sanitizeResources: false,
});
