/**
 * Reassembly of StreamAttention chunks into one typed array per (input, layer).
 *
 * The server splits one layer's result for one input into chunks by heads and/or by query
 * row ranges, and chunks of different inputs may interleave. `AttentionAssembler` puts them
 * back together, as the Python client's does (clients/python/introspect_client/results.py).
 */
import {
  AttentionView,
  type AttentionChunk,
  type ImageLayout,
  type StreamAttentionResponse,
  type StreamHeader,
} from "./gen/introspect/v1/introspect_pb.js";
import { decodeFloatTensor, decodeInt32Tensor } from "./tensors.js";

/** Lower-case view names, as the Python client spells them. */
export type AttentionViewName = "heads" | "head_mean" | "head_max" | "rollout" | "mean_distance";

const VIEW_NAMES: Partial<Record<number, AttentionViewName>> = {
  [AttentionView.UNSPECIFIED]: "heads", // the server treats UNSPECIFIED as HEADS
  [AttentionView.HEADS]: "heads",
  [AttentionView.HEAD_MEAN]: "head_mean",
  [AttentionView.HEAD_MAX]: "head_max",
  [AttentionView.ROLLOUT]: "rollout",
  [AttentionView.MEAN_DISTANCE]: "mean_distance",
};

/** The name of an AttentionView number ("heads" for UNSPECIFIED). */
export function viewName(view: number): AttentionViewName | undefined {
  return VIEW_NAMES[view];
}

/** A dense row-major array: `data` holds prod(shape) elements. */
export interface LayerArray<A extends Float32Array | Int32Array = Float32Array> {
  shape: number[];
  data: A;
}

/** Attention result of one input. */
export interface InputAttention {
  /** The tokenizer's string of every token, as the model saw the input. */
  tokens: string[];
  /** The token ids fed to the model. */
  tokenIds: number[];
  truncated: boolean;
  originalLength: number;
  view: AttentionViewName;
  /** Heads along the first axis of every array for "heads" and "mean_distance"; empty for
   * the views reduced over heads (their first axis has size 1). */
  heads: number[];
  /** layer -> float32 values (float16 and bfloat16 widened): [heads_or_1, query, keys_or_k];
   * with patch_grid [heads_or_1, grid_rows, grid_columns]; for "mean_distance" [heads]. */
  layers: Map<number, LayerArray>;
  /** With top_k: layer -> int32 key positions, the shape of `layers`' array. */
  keyIndices: Map<number, LayerArray<Int32Array>>;
  /** How an image input became tokens; undefined for text. */
  image?: ImageLayout;
  /** Token position of the first query row of every array. */
  queryStart: number;
}

/** Result of an attention call: one InputAttention per input, in request order. */
export interface AttentionResult {
  model: string;
  fingerprint: string;
  cached: boolean;
  inputs: InputAttention[];
}

/** Raised when a stream's messages do not assemble into a consistent result. */
export class AssemblyError extends Error {
  override name = "AssemblyError";
}

interface Piece {
  heads: number[];
  queryStart: number;
  queryEnd: number;
  /** [heads_or_1, rows, width] */
  shape: [number, number, number];
  values: Float32Array;
  indices?: Int32Array;
  grid?: [number, number];
}

function pieceOf(chunk: AttentionChunk): Piece {
  const where = `chunk of input ${chunk.inputIndex}, layer ${chunk.layer}`;
  if (!chunk.values) throw new AssemblyError(`${where}: no values`);
  const values = decodeFloatTensor(chunk.values);
  const indices = chunk.keyIndices ? decodeInt32Tensor(chunk.keyIndices) : undefined;
  let shape = values.shape;
  let grid: [number, number] | undefined;
  if (chunk.gridRows || chunk.gridColumns) {
    grid = [chunk.gridRows, chunk.gridColumns];
    if (shape.length !== 3 || shape[1] !== grid[0] || shape[2] !== grid[1] || chunk.queryStart !== 0 || chunk.queryEnd !== 1) {
      throw new AssemblyError(`${where}: patch-grid values of shape [${shape}] for a ${grid[0]}x${grid[1]} grid, ` +
        `query rows [${chunk.queryStart}, ${chunk.queryEnd})`);
    }
    shape = [shape[0], 1, grid[0] * grid[1]]; // same row-major data, one query row
  }
  const rows = chunk.queryEnd - chunk.queryStart;
  if (shape.length !== 3 || shape[1] !== rows || rows <= 0) {
    throw new AssemblyError(`${where}: values of shape [${values.shape}] do not match query rows [${chunk.queryStart}, ${chunk.queryEnd})`);
  }
  if (chunk.heads.length && shape[0] !== chunk.heads.length) {
    throw new AssemblyError(`${where}: ${chunk.heads.length} heads but values of shape [${values.shape}]`);
  }
  if (indices && indices.data.length !== values.data.length) {
    throw new AssemblyError(`${where}: key_indices of shape [${indices.shape}], values of shape [${values.shape}]`);
  }
  return { heads: [...chunk.heads], queryStart: chunk.queryStart, queryEnd: chunk.queryEnd,
    shape: shape as [number, number, number], values: values.data, indices: indices?.data, grid };
}

/** The rows [start, end) a requested (queryStart, queryEnd) gives an input of `length` tokens. */
function resolvedRows(queryStart: number, queryEnd: number, length: number): [number, number] {
  return [queryStart < 0 ? queryStart + length : queryStart,
    queryEnd === 0 ? length : queryEnd < 0 ? queryEnd + length : queryEnd];
}

/**
 * Collects a StreamAttention stream (header, then chunks) into an AttentionResult. Feed
 * every message to `add`, then call `result`. `heads` are the requested heads (their order
 * is the order of the first axis of per-head values); `queryStart`/`queryEnd` the requested
 * row range (negative counts from the end, queryEnd 0 is the end).
 */
export class AttentionAssembler {
  private header?: StreamHeader;
  private inputs: InputAttention[] = [];
  private pending = new Map<string, Piece[]>();
  private done = new Set<string>();

  constructor(
    private readonly defaultView: AttentionViewName = "heads",
    private readonly headOrder: readonly number[] = [],
    private readonly queryStart = 0,
    private readonly queryEnd = 0,
  ) {}

  add(message: StreamAttentionResponse): void {
    const payload = message.payload;
    if (payload.case === "header") {
      if (this.header) throw new AssemblyError("the stream sent a second header");
      this.header = payload.value;
      this.start(payload.value);
    } else if (payload.case === "chunk") {
      if (!this.header) throw new AssemblyError("the stream sent chunk before its header");
      this.addChunk(payload.value);
    }
  }

  private start(header: StreamHeader): void {
    const ordered = [...header.inputs].sort((a, b) => a.inputIndex - b.inputIndex);
    if (ordered.some((item, index) => item.inputIndex !== index)) {
      throw new AssemblyError("the stream header's input indices are not 0..n-1");
    }
    this.inputs = ordered.map((item) => ({
      tokens: [...item.tokens],
      tokenIds: item.tokenIds.map(Number),
      truncated: item.truncated,
      originalLength: item.originalLength,
      view: this.defaultView,
      heads: [],
      layers: new Map(),
      keyIndices: new Map(),
      image: item.image,
      queryStart: 0,
    }));
  }

  private addChunk(chunk: AttentionChunk): void {
    if (chunk.inputIndex < 0 || chunk.inputIndex >= this.inputs.length) {
      throw new AssemblyError(`chunk for input ${chunk.inputIndex}, but the request had ${this.inputs.length}`);
    }
    const key = `${chunk.inputIndex}:${chunk.layer}`;
    if (this.done.has(key)) {
      throw new AssemblyError(`chunk of input ${chunk.inputIndex}, layer ${chunk.layer} after its layer was complete`);
    }
    this.inputs[chunk.inputIndex].view = viewName(chunk.view) ?? this.defaultView;
    const pieces = this.pending.get(key) ?? [];
    pieces.push(pieceOf(chunk));
    this.pending.set(key, pieces);
    if (chunk.layerComplete) this.finish(chunk.inputIndex, chunk.layer);
  }

  private finish(inputIndex: number, layer: number): void {
    const key = `${inputIndex}:${layer}`;
    const target = this.inputs[inputIndex];
    const pieces = this.pending.get(key) ?? [];
    this.pending.delete(key);
    const where = `input ${inputIndex}, layer ${layer}`;
    if (!pieces.length) throw new AssemblyError(`${where}: no chunks`);
    const grids = new Set(pieces.map((piece) => (piece.grid ? piece.grid.join("x") : "")));
    if (grids.size > 1) throw new AssemblyError(`${where}: chunks disagree on the patch grid`);
    const grid = pieces[0].grid;
    const oneRow = grid !== undefined || target.view === "mean_distance";
    const [start, end] = oneRow ? [0, 1]
      : resolvedRows(this.queryStart, this.queryEnd, target.tokenIds.length || target.tokens.length);
    const rows = end - start;

    const seen = new Set(pieces.flatMap((piece) => piece.heads));
    const requested = new Set(this.headOrder);
    if (seen.size && requested.size && (seen.size !== requested.size || [...seen].some((head) => !requested.has(head)))) {
      throw new AssemblyError(`${where}: chunks for heads ${[...seen].sort((a, b) => a - b)}, but heads ` +
        `${[...requested].sort((a, b) => a - b)} were requested`);
    }
    const heads = [...new Set(this.headOrder)].filter((head) => seen.has(head));
    heads.push(...[...seen].filter((head) => !heads.includes(head)).sort((a, b) => a - b));
    if (heads.length && pieces.some((piece) => !piece.heads.length)) {
      throw new AssemblyError(`${where}: chunks mix per-head and reduced values`);
    }
    const width = pieces[0].shape[2];
    const withIndices = pieces[0].indices !== undefined;
    const headCount = heads.length || pieces[0].shape[0];
    const values = new Float32Array(headCount * rows * width);
    const indices = withIndices ? new Int32Array(headCount * rows * width) : undefined;
    const filled = new Uint8Array(headCount * rows);
    const position = new Map(heads.map((head, index) => [head, index]));
    for (const piece of pieces) {
      if (piece.shape[2] !== width) throw new AssemblyError(`${where}: chunks disagree on width`);
      if ((piece.indices !== undefined) !== withIndices) throw new AssemblyError(`${where}: key_indices on some chunks only`);
      if (piece.queryStart < start || piece.queryEnd > end) {
        throw new AssemblyError(`${where}: rows [${piece.queryStart}, ${piece.queryEnd}) outside the expected [${start}, ${end})`);
      }
      if (!heads.length && piece.shape[0] !== headCount) throw new AssemblyError(`${where}: chunks disagree on the first axis`);
      const pieceRows = piece.queryEnd - piece.queryStart;
      for (let h = 0; h < piece.shape[0]; h++) {
        const slot = heads.length ? position.get(piece.heads[h])! : h;
        const from = h * pieceRows * width;
        const to = (slot * rows + (piece.queryStart - start)) * width;
        values.set(piece.values.subarray(from, from + pieceRows * width), to);
        if (indices && piece.indices) indices.set(piece.indices.subarray(from, from + pieceRows * width), to);
        filled.fill(1, slot * rows + (piece.queryStart - start), slot * rows + (piece.queryEnd - start));
      }
    }
    const missing = filled.reduce((count, flag) => count + (flag ? 0 : 1), 0);
    if (missing) throw new AssemblyError(`${where}: the stream left ${missing} (head, query row) slices unfilled`);

    let shape = [headCount, rows, width];
    if (grid) shape = [headCount, grid[0], grid[1]];
    else if (target.view === "mean_distance") {
      if (rows !== 1 || width !== 1) throw new AssemblyError(`${where}: mean distance values of shape [${shape}], expected [heads, 1, 1]`);
      shape = [headCount];
    }
    target.queryStart = start;
    target.heads = heads;
    target.layers.set(layer, { shape, data: values });
    if (indices) target.keyIndices.set(layer, { shape: [...shape], data: indices });
    this.done.add(key);
  }

  /** The assembled result; AssemblyError if the stream was incomplete. */
  result(): AttentionResult {
    if (!this.header) throw new AssemblyError("the stream ended without a header");
    for (const key of [...this.pending.keys()]) {
      const [inputIndex, layer] = key.split(":").map(Number);
      this.finish(inputIndex, layer);
    }
    for (const item of this.inputs) {
      item.layers = new Map([...item.layers].sort(([a], [b]) => a - b));
      item.keyIndices = new Map([...item.keyIndices].sort(([a], [b]) => a - b));
    }
    return { model: this.header.model, fingerprint: this.header.fingerprint, cached: this.header.cached, inputs: this.inputs };
  }
}
