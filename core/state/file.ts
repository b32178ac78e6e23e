/**
 * Saving a read document's compressed state, and loading it back against the
 * model and tokenizer it was made with. Writes go to a temporary file beside
 * the target, renamed into place, so a killed write leaves nothing that loads.
 */
import { TomeError } from "../errors.ts";
import { TempFile } from "../temp_file.ts";
import { KvStore } from "../engine/kv_store.ts";
import { type ResolvedRun, resolveRun, type RunOptions } from "../engine/resolve.ts";
import { Sequence } from "../engine/sequence.ts";
import { DROP, NO_MERGE } from "../policies/merge/mod.ts";
import type { LoadedModel } from "../engine/model.ts";
import { Meter, type MeterEvent } from "../meter/meter.ts";
import { kvBytesPerToken, kvElementBytes } from "../model/config.ts";
import { modelDigest, sha256Hex, tokenizerDigest } from "./digest.ts";
import {
  decodeHeader,
  decodeState,
  encodeHead,
  payloadBytes,
  payloadParts,
  STATE_VERSION,
  type StateHeader,
} from "./format.ts";
import type { Sections } from "./sections.ts";
import { checkRun, packLayer, packSections, unpackLayer, unpackLow, unpackMerger } from "./tiers.ts";

export type { StateHeader };

/** What is saved beside the cache: the run, the framing and where the input came from. */
export type StateInfo = Omit<
  StateHeader,
  "version" | "model" | "tokenizer" | "lengths" | "payload" | "created" | "position" | "meter" | keyof Sections
>;

/**
 * Writes `seq`'s retained state for `model` to `path` (atomically): its K/V, and when it has them its low tier and
 * thin keys, and the merger's weights and thresholds of `run` (needed when the reading merges: a merged entry's
 * weight decides how later merges average into it).
 */
export async function saveState(
  path: string,
  model: LoadedModel,
  seq: Sequence,
  info: StateInfo,
  run?: ResolvedRun,
): Promise<StateHeader> {
  const { config } = model;
  const d = config.headDim;
  const merger = run?.plan.prefill.merge;
  const merge = info.run.merge;
  if (merge && merge !== DROP && merge !== NO_MERGE && merger?.name !== merge) {
    throw new Error(`saving a reading merged by ${merge} needs its run (the merger's weights are part of the state)`);
  }
  const layers = seq.store.layers.map((c) => packLayer(c, d));
  const { sections, parts } = packSections(seq, merger);
  const header: StateHeader = {
    version: Object.keys(sections).length > 0 ? STATE_VERSION : 1,
    model: {
      digest: await modelDigest(model.checkpoint),
      arch: config.arch,
      layers: config.layers,
      kvHeads: config.kvHeads,
      headDim: d,
    },
    tokenizer: { digest: await tokenizerDigest(model.tokenizer.dir) },
    ...info,
    // the tier options are the sequence's own (what the sections hold), whatever `info` says
    // (and the merge method is the merger's whose state is saved)
    run: {
      ...withoutTiers(info.run),
      weights: model.graph.weights,
      ...tierOptions(sections),
      ...(merger ? { merge: merger.name } : {}),
    },
    position: seq.position,
    lengths: seq.store.layers.map((c) => Array.from(c.lengths)),
    meter: seq.meter.snapshot(),
    created: new Date().toISOString(),
    payload: { bytes: 0, sha256: "" },
    ...sections,
  };
  header.payload.bytes = payloadBytes(header);
  const payload = payloadParts(layers, parts);
  header.payload.sha256 = await sha256Hex(...payload);
  const file = [encodeHead(header), ...payload];
  let tmp: TempFile | undefined;
  try {
    tmp = TempFile.create(path);
    for (const p of file) tmp.writeAllSync(p);
    tmp.commit();
  } catch (err) {
    tmp?.discard();
    throw new TomeError("output", `cannot write the state ${path}: ${(err as Error).message}`);
  }
  return header;
}

/** Reads only a state file's header (for `tome inspect`); the payload's checksum is not checked. */
export async function readStateHeader(path: string): Promise<StateHeader> {
  const { header } = await openState(path, false);
  return header;
}

/** A loaded state: its header and the sequence it continues, on `model`'s session. */
export interface LoadedState {
  header: StateHeader;
  sequence: Sequence;
  /**
   * The run the state reads on with, its merger holding the saved weights: the one passed to {@link loadState},
   * or, when the state carries merger state and none was passed, one resolved from the header. Continue a merged
   * reading with `read(more, { model, run: loaded.run, from: loaded.sequence })`.
   */
  run?: ResolvedRun;
}

/**
 * Loads a state for `model`: refused (exit 15) when its model, tokenizer,
 * positions, KV dtype or (with `run`) low tier, thin keys or merge method do
 * not match, or its payload is damaged. A saved merger state goes into `run`'s
 * merger (which must be fresh: what it held is replaced).
 */
export async function loadState(
  path: string,
  model: LoadedModel,
  onEvent?: (e: MeterEvent) => void,
  run?: ResolvedRun,
): Promise<LoadedState> {
  const { header, payload } = await openState(path, true);
  const refuse = (what: string) => new TomeError("stateInvalid", `${path}: ${what}`);
  const c = model.config;
  if (header.model.digest !== await modelDigest(model.checkpoint)) {
    throw refuse(`made with another model (${header.model.arch}, ${header.model.layers} layers)`);
  }
  if (header.tokenizer.digest !== await tokenizerDigest(model.tokenizer.dir)) {
    throw refuse("made with another tokenizer");
  }
  if (header.run.positions !== model.graph.positions || header.run.kvDtype !== model.graph.kvDtype) {
    throw refuse(
      `made with ${header.run.positions} positions and ${header.run.kvDtype} KV, the model is loaded with ${model.graph.positions} and ${model.graph.kvDtype}`,
    );
  }
  if (header.run.weights !== undefined && header.run.weights !== model.graph.weights) {
    throw refuse(`made with ${header.run.weights} weights, the model is loaded with ${model.graph.weights}`);
  }
  const { layers, sections } = decodeState(header, payload!, path);
  if (!run && header.merger) {
    run = await resolveRun(c, runOptions(header, model)).catch((err) => {
      if (err instanceof TomeError) throw refuse(`its run options do not resolve (${err.message})`);
      throw err;
    });
  }
  if (run) checkRun(run, header, refuse);
  const thin = header.thin;
  const store = new KvStore(
    c,
    header.run.kvDtype,
    thin ? { channels: thin.channels, window: thin.window } : undefined,
  );
  header.lengths.forEach((lengths, l) => {
    unpackLayer(store, l, layers[l], lengths, thin?.counts[l], sections.thin?.[l]);
  });
  const low = header.low ? unpackLow(c, header.low, sections, model.graph.lowTier, refuse) : undefined;
  if (header.merger && sections.merger) unpackMerger(run!.plan.prefill.merge!, store, sections);
  const tokenBytes = kvBytesPerToken(c, kvElementBytes(header.run.kvDtype));
  const meter = Meter.restore(tokenBytes, header.meter, onEvent);
  const sequence = new Sequence(model.session, store, meter, low);
  sequence.position = header.position;
  return { header, sequence, ...(run ? { run } : {}) };
}

/** The run options a state was read with, for {@link resolveRun} on `model`. */
export function runOptions(header: StateHeader, model: LoadedModel): RunOptions {
  const r = header.run;
  return {
    policy: r.policy,
    budget: r.budget,
    chunk: r.chunk,
    positions: r.positions,
    kvDtype: r.kvDtype,
    window: r.window,
    questionPatch: r.questionPatch,
    ...(r.decodeBudget !== null ? { decodeBudget: r.decodeBudget } : {}),
    ...(r.merge ? { merge: r.merge } : {}),
    ...tierRunOptions(header, model.config.headDim),
    weights: model.graph.weights,
    retainingHeads: model.graph.retainingHeads,
  };
}

/**
 * The tier options of a saved state as {@link RunOptions} (`keepEvicted`, `lowBudget`, `keyChannels` as a
 * fraction of `headDim`): what a run resumed from it resolves with.
 */
export function tierRunOptions(
  header: Pick<StateHeader, "run">,
  headDim: number,
): Pick<RunOptions, "keepEvicted" | "lowBudget" | "keyChannels"> {
  const r = header.run;
  return {
    ...(r.keepEvicted ? { keepEvicted: r.keepEvicted, lowBudget: r.lowBudget } : {}),
    ...(r.keyChannels ? { keyChannels: r.keyChannels / headDim } : {}),
  };
}

/** A header's run options without the tier options. */
function withoutTiers(r: StateHeader["run"]): StateHeader["run"] {
  const { keepEvicted: _tier, lowBudget: _budget, keyChannels: _channels, ...rest } = r;
  return rest;
}

/** The run options a state with these sections records (what {@link tierRunOptions} reads back). */
export function tierOptions(s: Sections): Pick<StateHeader["run"], "keepEvicted" | "lowBudget" | "keyChannels"> {
  return {
    ...(s.low ? { keepEvicted: s.low.bits === 4 ? "int4" as const : "int2" as const, lowBudget: s.low.budget } : {}),
    ...(s.thin ? { keyChannels: s.thin.channels } : {}),
  };
}

/** The tier options of a resolved run as a state header records them (for cache keys: every option that shapes a read). */
export function runTierOptions(
  run: ResolvedRun,
): Pick<StateHeader["run"], "keepEvicted" | "lowBudget" | "keyChannels"> {
  return {
    ...(run.lowTier ? { keepEvicted: run.lowTier.tier, lowBudget: run.lowTier.budget } : {}),
    ...(run.keyChannels ? { keyChannels: run.keyChannels.channels } : {}),
  };
}

async function openState(path: string, withPayload: boolean): Promise<{ header: StateHeader; payload?: Uint8Array }> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new TomeError("notFound", `state not found: ${path}`);
    throw new TomeError("unreadable", `cannot read the state ${path}: ${(err as Error).message}`);
  }
  try {
    const size = (await file.stat()).size;
    // the header (at most 16 MiB) lies in the file's first bytes; nothing is allocated from its length
    const head = new Uint8Array(Math.min(size, 16 << 20));
    await readFull(file, head);
    const { header, start } = decodeHeader(head, size, path);
    if (!withPayload) return { header };
    const payload = new Uint8Array(header.payload.bytes);
    await file.seek(start, Deno.SeekMode.Start);
    await readFull(file, payload);
    if (await sha256Hex(payload) !== header.payload.sha256) {
      throw new TomeError("stateInvalid", `${path}: the payload's checksum does not match (the file is damaged)`);
    }
    return { header, payload };
  } finally {
    file.close();
  }
}

async function readFull(file: Deno.FsFile, buf: Uint8Array): Promise<void> {
  let n = 0;
  while (n < buf.length) {
    const r = await file.read(buf.subarray(n));
    if (r === null) break;
    n += r;
  }
}
