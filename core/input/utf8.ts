/** Counters filled in while bytes are decoded. */
export interface DecodeCounts {
  /** Raw bytes seen. */
  bytes: number;
  /** U+FFFD characters produced for invalid UTF-8 (genuine U+FFFD in the input not counted). */
  replacedChars: number;
}

const REPLACEMENT = 0xfffd;

/**
 * A web stream that turns bytes into UTF-8 text, replacing invalid sequences
 * with U+FFFD and counting them in `counts` — never failing on bad bytes.
 * Multi-byte characters split across chunks are decoded whole.
 *
 * @example
 * const counts = { bytes: 0, replacedChars: 0 };
 * const text = file.readable.pipeThrough(decodeUtf8(counts));
 */
export function decodeUtf8(counts: DecodeCounts): TransformStream<Uint8Array, string> {
  const decoder = new TextDecoder("utf-8", { fatal: false });
  // Genuine U+FFFD is the byte sequence EF BF BD; keep the last two bytes of the
  // previous chunk so a sequence split across chunks is still recognised.
  let prev1 = -1;
  let prev2 = -1;
  const genuine = (bytes: Uint8Array): number => {
    let n = 0;
    for (let i = 0; i < bytes.length; i++) {
      const b = bytes[i];
      const b1 = i >= 1 ? bytes[i - 1] : prev1;
      const b2 = i >= 2 ? bytes[i - 2] : (i === 1 ? prev1 : prev2);
      if (b === 0xbd && b1 === 0xbf && b2 === 0xef) n++;
    }
    if (bytes.length >= 2) {
      prev2 = bytes[bytes.length - 2];
      prev1 = bytes[bytes.length - 1];
    } else if (bytes.length === 1) {
      prev2 = prev1;
      prev1 = bytes[0];
    }
    return n;
  };
  const emit = (text: string, controller: TransformStreamDefaultController<string>) => {
    if (text.length === 0) return;
    counts.replacedChars += countChar(text, REPLACEMENT);
    controller.enqueue(text);
  };
  return new TransformStream<Uint8Array, string>({
    transform(chunk, controller) {
      counts.bytes += chunk.length;
      counts.replacedChars -= genuine(chunk);
      emit(decoder.decode(chunk, { stream: true }), controller);
    },
    flush(controller) {
      emit(decoder.decode(), controller);
    },
  });
}

/**
 * Decodes a whole buffer as {@link decodeUtf8} would (U+FFFD for invalid
 * sequences, counted in `counts`; genuine U+FFFD not counted), without a stream.
 */
export function decodeUtf8Whole(bytes: Uint8Array, counts: DecodeCounts): string {
  const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
  counts.bytes += bytes.length;
  let genuine = 0;
  for (let i = bytes.indexOf(0xef); i >= 0 && i + 2 < bytes.length; i = bytes.indexOf(0xef, i + 1)) {
    if (bytes[i + 1] === 0xbf && bytes[i + 2] === 0xbd) genuine++;
  }
  counts.replacedChars += countChar(text, REPLACEMENT) - genuine;
  return text;
}

function countChar(text: string, code: number): number {
  let n = 0;
  for (let i = text.indexOf(String.fromCharCode(code)); i >= 0; i = text.indexOf(String.fromCharCode(code), i + 1)) n++;
  return n;
}
