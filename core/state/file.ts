/**
 * Saving a read document's compressed state, and loading it back against the
 * model and tokenizer it was made with. Writes go to a temporary file beside
 * the target, renamed into place, so a killed write leaves nothing that loads.
 */
import { TomeError } from "../errors.ts";
import { TempFile } from "../temp_file.ts";
import { copyRows, KvStore } from "../engine/kv_store.ts";
import { Sequence } from "../engine/sequence.ts";
import type { LoadedModel } from "../engine/model.ts";
import { Meter, type MeterEvent } from "../meter/meter.ts";
import { kvBytesPerToken, kvElementBytes } from "../model/config.ts";
import { modelDigest, sha256Hex, tokenizerDigest } from "./digest.ts";
import {
  decodeHeader,
  decodePayload,
  encodeHead,
  payloadBytes,
  payloadParts,
  type StateHeader,
  type StateLayer,
} from "./format.ts";

export type { StateHeader };

/** What is saved beside the cache: the run, the framing and where the input came from. */
export type StateInfo = Omit<
  StateHeader,
  "version" | "model" | "tokenizer" | "lengths" | "payload" | "created" | "position" | "meter"
>;

/** Writes `seq`'s retained state for `model` to `path` (atomically). */
export async function saveState(
  path: string,
  model: LoadedModel,
  seq: Sequence,
  info: StateInfo,
): Promise<StateHeader> {
  const { config } = model;
  const d = config.headDim;
  if (seq.store.keyChannels) throw new TomeError("usage", "a reading with thin keys (--key-channels) cannot be saved");
  const layers: StateLayer[] = seq.store.layers.map((c) => {
    const n = c.lengths.reduce((a, b) => a + b, 0);
    const f32 = c.keys instanceof Float32Array;
    const out: StateLayer = {
      keys: f32 ? new Float32Array(n * d) : new Uint16Array(n * d),
      values: f32 ? new Float32Array(n * d) : new Uint16Array(n * d),
      positions: new Int32Array(n),
      accumulated: new Float32Array(n),
      seen: new Float32Array(n),
      importance: new Float32Array(n),
    };
    let at = 0;
    c.lengths.forEach((len, h) => {
      copyRows(c, h * c.capacity, out, at, len, d);
      at += len;
    });
    return out;
  });
  const header: StateHeader = {
    version: 1,
    model: {
      digest: await modelDigest(model.checkpoint),
      arch: config.arch,
      layers: config.layers,
      kvHeads: config.kvHeads,
      headDim: d,
    },
    tokenizer: { digest: await tokenizerDigest(model.tokenizer.dir) },
    ...info,
    run: { ...info.run, weights: model.graph.weights },
    position: seq.position,
    lengths: seq.store.layers.map((c) => Array.from(c.lengths)),
    meter: seq.meter.snapshot(),
    created: new Date().toISOString(),
    payload: { bytes: 0, sha256: "" },
  };
  header.payload.bytes = payloadBytes(header);
  const payload = payloadParts(layers);
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
}

/**
 * Loads a state for `model`: refused (exit 15) when its model, tokenizer,
 * positions or KV dtype do not match, or its payload is damaged.
 */
export async function loadState(
  path: string,
  model: LoadedModel,
  onEvent?: (e: MeterEvent) => void,
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
  const layers = decodePayload(header, payload!);
  const store = new KvStore(c, header.run.kvDtype);
  const d = c.headDim;
  header.lengths.forEach((lengths, l) => {
    const cap = Math.max(...lengths);
    const src = layers[l];
    const layer = store.layers[l] = {
      capacity: cap,
      keys: header.run.kvDtype === "float32"
        ? new Float32Array(c.kvHeads * cap * d)
        : new Uint16Array(c.kvHeads * cap * d),
      values: header.run.kvDtype === "float32"
        ? new Float32Array(c.kvHeads * cap * d)
        : new Uint16Array(c.kvHeads * cap * d),
      lengths: Int32Array.from(lengths),
      positions: new Int32Array(c.kvHeads * cap),
      accumulated: new Float32Array(c.kvHeads * cap),
      seen: new Float32Array(c.kvHeads * cap),
      importance: new Float32Array(c.kvHeads * cap),
    };
    let at = 0;
    lengths.forEach((len, h) => {
      copyRows(src, at, layer, h * cap, len, d);
      at += len;
    });
  });
  const meter = Meter.restore(kvBytesPerToken(c, kvElementBytes(header.run.kvDtype)), header.meter, onEvent);
  const sequence = new Sequence(model.session, store, meter);
  sequence.position = header.position;
  return { header, sequence };
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
