/**
 * A small ONNX graph builder over `onnx-proto`: typed inputs and outputs,
 * initializers written straight to an external-data file (so a model of any
 * size is built in constant memory), nodes named by scope so the graph reads
 * like the code that built it.
 */
import onnxProto from "onnx-proto";

const { onnx } = onnxProto;

/** Element types used in tome's graphs. */
export type ElemType = "float32" | "float16" | "bfloat16" | "uint8" | "int64" | "bool";
const ONNX_TYPE: Record<ElemType, number> = { float32: 1, uint8: 2, int64: 7, bool: 9, float16: 10, bfloat16: 16 };
const BYTES: Record<ElemType, number> = { float32: 4, uint8: 1, int64: 8, bool: 1, float16: 2, bfloat16: 2 };

/** A dimension: a number, or a symbolic name such as `"S"`. */
export type Dim = number | string;

/** A float attribute (an attribute given as a plain number is an integer). */
export interface FloatAttr {
  float: number;
}
/** Marks a float attribute: `{ epsilon: float(1e-6) }`. */
export const float = (x: number): FloatAttr => ({ float: x });
/** A graph attribute: the body of a control-flow node such as `If` (see {@link Graph.branch}). */
export interface GraphAttr {
  graph: GraphProto;
}
export type Attr = number | number[] | string | FloatAttr | GraphAttr;

/** Where initializers larger than `threshold` bytes go. */
export interface ExternalData {
  /** Open file to append to. */
  file: Deno.FsFile;
  /** Its name relative to the model file. */
  location: string;
  threshold: number;
}

type NodeProto = InstanceType<typeof onnx.NodeProto>;
type TensorProto = InstanceType<typeof onnx.TensorProto>;
type ValueInfoProto = InstanceType<typeof onnx.ValueInfoProto>;
type GraphProto = InstanceType<typeof onnx.GraphProto>;

/** Initializer data: float32 values (stored as the given type) or raw typed data. */
export type InitData = Float32Array | Uint16Array | BigInt64Array | Uint8Array;

export class Graph {
  /** The main graph's nodes (a branch's nodes go to its own list while it is built). */
  readonly nodes: NodeProto[] = [];
  #target: NodeProto[] = this.nodes;
  readonly inputs: ValueInfoProto[] = [];
  readonly outputs: ValueInfoProto[] = [];
  readonly initializers: TensorProto[] = [];
  #scope: string[] = [];
  #count = new Map<string, number>();
  #constants = new Map<string, string>();
  #offset = 0;

  constructor(readonly external?: ExternalData) {}

  /** Declares a graph input. */
  input(name: string, type: ElemType, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** Declares a graph output produced under `name` (nodes write to it via `op(..., { out: name })`). */
  output(name: string, type: ElemType, dims: Dim[]): void {
    this.outputs.push(valueInfo(name, type, dims));
  }

  /** Runs `fn` with node names prefixed by `scope/` (until its promise settles, when it returns one). */
  within<T>(scope: string, fn: () => T): T {
    this.#scope.push(scope);
    let result: T;
    try {
      result = fn();
    } catch (err) {
      this.#scope.pop();
      throw err;
    }
    if (result instanceof Promise) return result.finally(() => this.#scope.pop()) as T;
    this.#scope.pop();
    return result;
  }

  /** Adds a weight. Float32 data is stored as `type` (float16 converted by the caller and passed as Uint16Array). */
  weight(name: string, type: ElemType, dims: number[], data: InitData): string {
    const full = this.#name(name);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    if (bytes.length !== dims.reduce((a, b) => a * b, 1) * BYTES[type]) {
      throw new Error(`initializer ${full}: ${bytes.length} bytes do not fit [${dims}] ${type}`);
    }
    const t = onnx.TensorProto.create({ name: full, dims, dataType: ONNX_TYPE[type] });
    if (this.external && bytes.length >= this.external.threshold) {
      const pad = (4096 - (this.#offset % 4096)) % 4096; // page-aligned, so onnxruntime can map it
      if (pad) writeAllSync(this.external.file, new Uint8Array(pad));
      this.#offset += pad;
      writeAllSync(this.external.file, bytes);
      t.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL;
      t.externalData = [
        { key: "location", value: this.external.location },
        { key: "offset", value: String(this.#offset) },
        { key: "length", value: String(bytes.length) },
      ];
      this.#offset += bytes.length;
    } else {
      t.rawData = bytes.slice();
    }
    this.initializers.push(t);
    return full;
  }

  /**
   * A second initializer over the bytes of `of` (an initializer of this graph): the same external span, or a copy
   * of small inline data. onnxruntime maps each initializer on its own, so a consumer that repacks its copy at load
   * (and releases it) leaves the other's pages untouched.
   */
  alias(name: string, of: string): string {
    const src = this.initializers.find((t) => t.name === of);
    if (!src) throw new Error(`alias ${name}: no initializer ${of}`);
    const t = onnx.TensorProto.create({ ...src, name: this.#name(name) });
    this.initializers.push(t);
    return t.name;
  }

  /** A small int64 constant (shared between uses). */
  ints(values: number[], dims: number[] = [values.length]): string {
    return this.#constant("int64", values, dims, () => BigInt64Array.from(values.map(BigInt)));
  }

  /** A small float32 constant (shared between uses). */
  floats(values: number[], dims: number[] = [values.length]): string {
    return this.#constant("float32", values, dims, () => Float32Array.from(values));
  }

  #constant(type: ElemType, values: number[], dims: number[], data: () => Float32Array | BigInt64Array): string {
    const key = `${type}:${dims}:${values}`;
    let name = this.#constants.get(key);
    if (!name) {
      name = `const_${type}_${this.#constants.size}`;
      this.initializers.push(
        onnx.TensorProto.create({ name, dims, dataType: ONNX_TYPE[type], rawData: bytesOf(data()) }),
      );
      this.#constants.set(key, name);
    }
    return name;
  }

  /**
   * Adds a node; returns the name of its (first) output. `out` names the
   * output (e.g. a graph output); `outputs` asks for several (see {@link opN}).
   */
  op(
    type: string,
    inputs: string[],
    attrs: Record<string, Attr> = {},
    opts: { out?: string; domain?: string } = {},
  ): string {
    return this.opN(type, inputs, 1, attrs, opts)[0];
  }

  /** Adds a node with `n` outputs; returns their names. */
  opN(
    type: string,
    inputs: string[],
    n: number,
    attrs: Record<string, Attr> = {},
    opts: { out?: string; domain?: string } = {},
  ): string[] {
    const name = this.#name(type);
    const outputs = n === 1 && opts.out ? [opts.out] : Array.from({ length: n }, (_, i) => `${name}:${i}`);
    this.#target.push(
      onnx.NodeProto.create({
        name,
        opType: type,
        domain: opts.domain ?? "",
        input: inputs,
        output: outputs,
        attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
      }),
    );
    return outputs;
  }

  /**
   * Returns `x` unchanged, but computed after `deps` in any topological order:
   * x + 0·Σ deps, exact for finite `deps` (an ONNX graph has no control edges).
   * The sum is a chain of `Add`s, not `Sum`: WebGPU has no `Sum` kernel, and a
   * CPU node here would pull every layer's hidden state through the host.
   */
  after(x: string, deps: string[]): string {
    const sums = deps.map((d) => this.op("ReduceSum", [d], { keepdims: 0 }));
    const total = sums.reduce((a, b) => this.op("Add", [a, b]));
    const zero = this.op("Mul", [total, this.floats([0], [])]);
    return this.op("Add", [x, zero]);
  }

  /**
   * An `If` node on the bool scalar `cond`: `then` and `otherwise` each build
   * a branch (a subgraph that may read any value built before it, as ONNX
   * outer-scope values) and return its values, one for each of `outs`, which
   * name the node's outputs. Only the taken branch runs. The branches' values
   * must agree in element type (`outs[i].type`); their shapes may differ.
   * With `cond` null there is no switch: `then`'s values are built into this
   * graph and named `outs` (for providers without an `If` kernel, such as
   * onnxruntime 1.30's WebGPU, where the node would run on the CPU).
   */
  branch(
    cond: string | null,
    outs: { name: string; type: ElemType }[],
    then: () => string[],
    otherwise: () => string[],
  ): string[] {
    if (cond === null) {
      const values = then();
      if (values.length !== outs.length) throw new Error(`${values.length} values for ${outs.length} outputs`);
      return values.map((v, i) => this.op("Identity", [v], {}, { out: outs[i].name }));
    }
    const name = this.#name("If");
    const local = name.slice(name.lastIndexOf("/") + 1);
    const thenBranch = this.#subgraph(`${local}.then`, outs, then);
    const elseBranch = this.#subgraph(`${local}.else`, outs, otherwise);
    this.#target.push(
      onnx.NodeProto.create({
        name,
        opType: "If",
        domain: "",
        input: [cond],
        output: outs.map((o) => o.name),
        attribute: [attribute("then_branch", { graph: thenBranch }), attribute("else_branch", { graph: elseBranch })],
      }),
    );
    return outs.map((o) => o.name);
  }

  /** Builds `fn`'s nodes, named under `scope`, into a subgraph whose outputs are the values `fn` returns. */
  #subgraph(scope: string, outs: { type: ElemType }[], fn: () => string[]): GraphProto {
    const outer = this.#target;
    const nodes: NodeProto[] = [];
    this.#target = nodes;
    try {
      const values = this.within(scope, fn);
      if (values.length !== outs.length) {
        throw new Error(`${scope}: ${values.length} values for ${outs.length} outputs`);
      }
      // a subgraph's output is produced inside it: an outer value (or one returned twice) goes through Identity
      const made = new Set(nodes.flatMap((n) => n.output ?? []));
      const output = values.map((v, i) => {
        const own = made.has(v) && values.indexOf(v) === i ? v : this.op("Identity", [v]);
        return valueInfo(own, outs[i].type);
      });
      return onnx.GraphProto.create({ name: scope, node: nodes, output });
    } finally {
      this.#target = outer;
    }
  }

  /** Serializes the model. `opsets` maps domains to versions, e.g. `{ "": 21 }`. */
  encode(opsets: Record<string, number>, docString = ""): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 10,
      producerName: "tome",
      docString,
      opsetImport: Object.entries(opsets).map(([domain, version]) => ({ domain, version })),
      graph: onnx.GraphProto.create({
        name: "tome",
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
      }),
    });
    return onnx.ModelProto.encode(model).finish();
  }

  #name(base: string): string {
    const prefix = this.#scope.length ? `${this.#scope.join("/")}/` : "";
    const full = `${prefix}${base}`;
    const n = this.#count.get(full) ?? 0;
    this.#count.set(full, n + 1);
    return n === 0 ? full : `${full}_${n}`;
  }
}

/** A value's type; without `dims`, of unknown shape. */
function valueInfo(name: string, type: ElemType, dims?: Dim[]): ValueInfoProto {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType: ONNX_TYPE[type],
        ...(dims
          ? { shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) } }
          : {}),
      },
    },
  });
}

function attribute(name: string, v: Attr) {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === "string") return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if (typeof v === "object" && "graph" in v) return { name, type: T.GRAPH, g: v.graph };
  if (typeof v === "object") return { name, type: T.FLOAT, f: v.float };
  return { name, type: T.INT, i: v };
}

function bytesOf(a: Float32Array | BigInt64Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function writeAllSync(file: Deno.FsFile, bytes: Uint8Array): void {
  for (let at = 0; at < bytes.length;) at += file.writeSync(bytes.subarray(at));
}
