/**
 * Where the graph runs. `auto` picks CUDA when onnxruntime-node's CUDA
 * provider is installed, else WebGPU when a hardware adapter exists, else the
 * CPU, and says which; an explicit device that is not available is an error
 * naming how to get it.
 */
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { TomeError } from "../errors.ts";

export type DeviceRequest = "auto" | "cpu" | "webgpu" | "cuda";
export const DEVICES: DeviceRequest[] = ["auto", "cpu", "webgpu", "cuda"];

export interface DeviceChoice {
  device: "cpu" | "webgpu" | "cuda";
  /** onnxruntime execution providers, in order of preference. */
  providers: string[];
  /** One line on why this device. */
  reason: string;
  /** The WebGPU adapter, when the device is webgpu. */
  adapter?: AdapterInfo;
}

const CUDA_HINT =
  "reinstall onnxruntime-node with ONNXRUNTIME_NODE_INSTALL=cuda12 (it downloads the CUDA provider from NuGet: needs internet, CUDA 12 and cuDNN 9)";
/** How to get WebGPU working, for error messages. */
export const WEBGPU_HINT =
  "WebGPU needs the Vulkan loader (libvulkan1) and a Vulkan driver for the GPU (Mesa 25's lavapipe works, slowly, in software)";

/** The onnxruntime-node native folder for this platform. */
function ortBinFolder(): string | null {
  try {
    const main = createRequire(import.meta.url).resolve("onnxruntime-node");
    return join(
      dirname(main),
      "..",
      "bin",
      "napi-v6",
      Deno.build.os === "windows" ? "win32" : Deno.build.os,
      Deno.build.arch === "x86_64" ? "x64" : "arm64",
    );
  } catch {
    return null;
  }
}

/** True when onnxruntime-node's CUDA execution provider library is installed. */
export function cudaInstalled(): boolean {
  const bin = ortBinFolder();
  if (!bin) return false;
  const lib = Deno.build.os === "windows" ? "onnxruntime_providers_cuda.dll" : "libonnxruntime_providers_cuda.so";
  try {
    return Deno.statSync(join(bin, lib)).isFile;
  } catch {
    return false;
  }
}

/** What the WebGPU adapter says about itself (Deno's WebGPU sees the same Vulkan devices as onnxruntime's Dawn). */
export interface AdapterInfo {
  vendor: string;
  architecture: string;
  device: string;
  /** Usually the driver's device name, e.g. "NVIDIA GeForce RTX 4090" or "llvmpipe (LLVM 15.0.6, 256 bits)". */
  description: string;
  /** A CPU implementation (lavapipe, SwiftShader): slower than the CPU provider, so never picked by `auto`. */
  software: boolean;
}

/** True when the Vulkan loader can be opened: onnxruntime's Dawn reaches GPUs on Linux only through it. */
export function vulkanLoader(): boolean {
  if (Deno.build.os !== "linux") return true;
  try {
    Deno.dlopen("libvulkan.so.1", {}).close();
    return true;
  } catch {
    return false;
  }
}

/** The WebGPU adapter, or null when there is none (or, on Linux, no Vulkan loader for onnxruntime to use). */
export async function webgpuAdapter(): Promise<AdapterInfo | null> {
  // deno-lint-ignore no-explicit-any
  const gpu = (navigator as any).gpu;
  if (!gpu?.requestAdapter || !vulkanLoader()) return null;
  try {
    const adapter = await gpu.requestAdapter({ powerPreference: "high-performance" });
    if (!adapter) return null;
    const info = adapter.info ?? {};
    const text = (k: string) => String(info[k] ?? "");
    const description = text("description") || text("device");
    const software = info.isFallbackAdapter === true || adapter.isFallbackAdapter === true ||
      /llvmpipe|lavapipe|swiftshader|software/i.test(description);
    return {
      vendor: text("vendor"),
      architecture: text("architecture"),
      device: text("device"),
      description,
      software,
    };
  } catch {
    return null;
  }
}

export async function chooseDevice(requested: DeviceRequest): Promise<DeviceChoice> {
  if (requested === "cpu") return { device: "cpu", providers: ["cpu"], reason: "asked for" };
  if (requested === "cuda") {
    if (!cudaInstalled()) {
      throw new TomeError("device", `--device cuda: the CUDA execution provider is not installed; ${CUDA_HINT}`);
    }
    return { device: "cuda", providers: ["cuda", "cpu"], reason: "asked for" };
  }
  const adapter = await webgpuAdapter();
  if (requested === "webgpu") {
    if (!adapter) {
      const what = vulkanLoader() ? "no WebGPU adapter found" : "no Vulkan loader (libvulkan.so.1)";
      throw new TomeError("device", `--device webgpu: ${what}; ${WEBGPU_HINT}`);
    }
    return {
      device: "webgpu",
      providers: ["webgpu", "cpu"],
      reason: `asked for (${adapter.description || "adapter"}${adapter.software ? ", software" : ""})`,
      adapter,
    };
  }
  if (cudaInstalled()) return { device: "cuda", providers: ["cuda", "cpu"], reason: "CUDA provider installed" };
  if (adapter && !adapter.software) {
    return {
      device: "webgpu",
      providers: ["webgpu", "cpu"],
      reason: `WebGPU adapter: ${adapter.description}`,
      adapter,
    };
  }
  const why = adapter ? "no CUDA provider; the WebGPU adapter is software" : "no CUDA provider, no WebGPU adapter";
  return { device: "cpu", providers: ["cpu"], reason: why };
}
