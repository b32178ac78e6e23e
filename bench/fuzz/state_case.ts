/**
 * Worker side of the saved-state fuzzer: a case is a whole state file. It is
 * read as `tome` reads one — the header checked by `decodeHeader` against the
 * file's size, the payload's SHA-256 compared with the header's, the payload
 * split by `decodePayload` — and the result summarized for the checker.
 */
import { TomeError } from "../../core/errors.ts";
import { sha256Hex } from "../../core/state/digest.ts";
import { decodeHeader, decodePayload } from "../../core/state/format.ts";

/** Nothing to prepare. */
export async function setup(_dir: string): Promise<void> {}

/** Reads the state in `input`; returns its header and each layer's array lengths. */
export async function runCase(input: Uint8Array, _dir: string): Promise<unknown> {
  const where = "case.tstate";
  const { header, start } = decodeHeader(input.subarray(0, Math.min(input.length, 16 << 20)), input.length, where);
  const payload = input.subarray(start, start + header.payload.bytes);
  if (await sha256Hex(payload) !== header.payload.sha256) {
    throw new TomeError("stateInvalid", `${where}: the payload's checksum does not match`);
  }
  const layers = decodePayload(header, payload);
  return {
    header,
    layers: layers.map((l) =>
      [l.keys, l.values, l.positions, l.accumulated, l.seen, l.importance].map((a) => a.length)
    ),
    f32: layers.map((l) => l.keys instanceof Float32Array),
  };
}
