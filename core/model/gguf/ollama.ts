/**
 * `ollama:NAME[:TAG]`: a model in the local Ollama store. The store is
 * `$OLLAMA_MODELS` or `~/.ollama/models`; a model's manifest is
 * `manifests/registry.ollama.ai/library/NAME/TAG` (JSON, default tag `latest`;
 * `NAMESPACE/NAME` and `HOST/NAMESPACE/NAME` name other registries), and its
 * weights are the blob of the layer with media type
 * `application/vnd.ollama.image.model`: `blobs/sha256-<hex>`.
 */
import { join } from "node:path";
import { TomeError } from "../../errors.ts";

/** The prefix of an Ollama model reference. */
export const OLLAMA_PREFIX = "ollama:";
const MODEL_LAYER = "application/vnd.ollama.image.model";

/** The Ollama store directory. */
export function ollamaStore(): string {
  const env = Deno.env.get("OLLAMA_MODELS");
  if (env) return env;
  return join(Deno.env.get("HOME") ?? Deno.env.get("USERPROFILE") ?? ".", ".ollama", "models");
}

/** Resolves `ollama:NAME[:TAG]` to the GGUF blob it names; clear errors name the path looked for. */
export async function resolveOllama(spec: string): Promise<string> {
  const ref = spec.slice(OLLAMA_PREFIX.length);
  const m = /^([A-Za-z0-9][A-Za-z0-9._\/-]*?)(?::([A-Za-z0-9._-]+))?$/.exec(ref);
  if (!m || m[1].split("/").some((p) => p === "" || p === "." || p === "..")) {
    throw new TomeError("usage", `${spec} is not an Ollama model name (ollama:NAME or ollama:NAME:TAG)`);
  }
  const parts = m[1].split("/");
  const tag = m[2] ?? "latest";
  const [host, namespace, name] = parts.length === 1
    ? ["registry.ollama.ai", "library", parts[0]]
    : parts.length === 2
    ? ["registry.ollama.ai", parts[0], parts[1]]
    : parts.length === 3
    ? parts
    : [];
  if (!name) throw new TomeError("usage", `${spec} is not an Ollama model name (ollama:NAME or ollama:NAME:TAG)`);
  const store = ollamaStore();
  const manifest = join(store, "manifests", host, namespace, name, tag);
  let text: string;
  try {
    text = await Deno.readTextFile(manifest);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new TomeError(
        "notFound",
        `Ollama model ${name}:${tag} not found: no manifest ${manifest} (store: ${store}; set OLLAMA_MODELS, or \`ollama pull ${name}:${tag}\`)`,
      );
    }
    throw new TomeError("unreadable", `cannot read Ollama manifest ${manifest}: ${(err as Error).message}`);
  }
  let layers: { mediaType?: unknown; digest?: unknown }[];
  try {
    const json = JSON.parse(text);
    layers = Array.isArray(json?.layers) ? json.layers : [];
  } catch {
    throw new TomeError("modelInvalid", `Ollama manifest ${manifest} is not valid JSON`);
  }
  const layer = layers.find((l) => l?.mediaType === MODEL_LAYER);
  if (!layer) throw new TomeError("modelInvalid", `Ollama manifest ${manifest} has no ${MODEL_LAYER} layer`);
  const digest = String(layer.digest ?? "");
  if (!/^sha256[:-][0-9a-f]{64}$/.test(digest)) {
    throw new TomeError("modelInvalid", `Ollama manifest ${manifest}: model layer digest ${digest} is not sha256`);
  }
  const blob = join(store, "blobs", digest.replace(":", "-"));
  try {
    if (!(await Deno.stat(blob)).isFile) throw new Deno.errors.NotFound();
  } catch {
    throw new TomeError("notFound", `Ollama model ${name}:${tag}: blob ${blob} named by ${manifest} is missing`);
  }
  return blob;
}
