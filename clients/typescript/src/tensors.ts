/**
 * Tensor wire format: shape + dtype + raw little-endian, row-major bytes.
 *
 * gRPC hands `bytes` fields over as views into larger Node Buffers at arbitrary (often
 * odd) byte offsets, so the decoder never builds a typed array over the message's buffer:
 * it copies into a freshly allocated, aligned one, or reads through a DataView. Node 20 has no
 * Float16Array: float16 and bfloat16 decode to float32 (exactly; every value of both is a
 * float32 value).
 */
import { Dtype, type Tensor } from "./gen/introspect/v1/introspect_pb.js";

/** Wire dtype names, as the Python client spells them. */
export type DtypeName = "float32" | "float16" | "bfloat16" | "int32" | "uint8";

/** The array a dtype decodes to. */
export type TensorArray = Float32Array | Int32Array | Uint8Array;

/** A decoded tensor: `data` holds prod(shape) elements in row-major order. */
export interface DecodedTensor<A extends TensorArray = TensorArray> {
  shape: number[];
  dtype: DtypeName;
  data: A;
}

/** Raised for tensors that cannot be decoded (unknown dtype, wrong byte length, bad shape). */
export class TensorDecodeError extends Error {
  override name = "TensorDecodeError";
}

/** Whether this machine stores numbers little-endian (the wire's order): then float32 and
 * int32 decode by one copy into a fresh, aligned buffer instead of element by element. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** A copy of `bytes` in a buffer of its own (offset 0, so aligned for any typed array). */
function alignedCopy(bytes: Uint8Array): ArrayBuffer {
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return copy.buffer;
}

const ITEM_BYTES: Record<DtypeName, number> = { float32: 4, float16: 2, bfloat16: 2, int32: 4, uint8: 1 };

const NAMES: Partial<Record<number, DtypeName>> = {
  [Dtype.FLOAT32]: "float32",
  [Dtype.FLOAT16]: "float16",
  [Dtype.BFLOAT16]: "bfloat16",
  [Dtype.INT32]: "int32",
  [Dtype.UINT8]: "uint8",
};

/** The name of a wire dtype number; TensorDecodeError for UNSPECIFIED and unknown numbers. */
export function dtypeName(dtype: number): DtypeName {
  const name = NAMES[dtype];
  if (name === undefined) throw new TensorDecodeError(`unknown tensor dtype ${dtype}`);
  return name;
}

/** Bytes per element of a wire dtype. */
export function itemBytes(dtype: DtypeName): number {
  return ITEM_BYTES[dtype];
}

/** Number of elements of an array of `shape` (1 for a scalar). */
export function elementCount(shape: readonly number[]): number {
  return shape.reduce((product, size) => product * size, 1);
}

/** IEEE 754 binary16 bits to the number they encode. */
export function float16ToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24; // zero and subnormals
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}

function shapeOf(shape: readonly (bigint | number)[]): number[] {
  return shape.map((size) => {
    const value = Number(size);
    if (!Number.isSafeInteger(value) || value < 0) throw new TensorDecodeError(`invalid tensor shape [${shape.join(", ")}]`);
    return value;
  });
}

/** Options of decodeBytes. */
export interface DecodeOptions {
  /** Read element by element through a DataView even on a little-endian machine (the
   * path big-endian machines take; the tests run both). */
  dataView?: boolean;
}

/**
 * Decodes raw little-endian bytes of `dtype` and `shape`. `bytes` may start at any byte
 * offset of its buffer; the result never shares memory with it. Throws TensorDecodeError
 * when the byte length is not prod(shape) x the element size, or the dtype is unknown.
 */
export function decodeBytes(
  bytes: Uint8Array,
  shape: readonly (bigint | number)[],
  dtype: number | DtypeName,
  options: DecodeOptions = {},
): DecodedTensor {
  const name = typeof dtype === "number" ? dtypeName(dtype) : dtype;
  if (!(name in ITEM_BYTES)) throw new TensorDecodeError(`unknown tensor dtype ${String(dtype)}`);
  const dims = shapeOf(shape);
  const count = elementCount(dims);
  const expected = count * ITEM_BYTES[name];
  if (bytes.byteLength !== expected) {
    throw new TensorDecodeError(
      `tensor of shape [${dims.join(", ")}] and dtype ${name} needs ${expected} bytes, got ${bytes.byteLength}`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (LITTLE_ENDIAN && !options.dataView) {
    if (name === "float32") return { shape: dims, dtype: name, data: new Float32Array(alignedCopy(bytes)) };
    if (name === "int32") return { shape: dims, dtype: name, data: new Int32Array(alignedCopy(bytes)) };
  }
  let data: TensorArray;
  switch (name) {
    case "float32": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(i * 4, true);
      data = out;
      break;
    }
    case "float16": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = float16ToNumber(view.getUint16(i * 2, true));
      data = out;
      break;
    }
    case "bfloat16": {
      const out = new Float32Array(count);
      const widened = new DataView(new ArrayBuffer(4));
      for (let i = 0; i < count; i++) {
        widened.setUint32(0, view.getUint16(i * 2, true) << 16 >>> 0, true);
        out[i] = widened.getFloat32(0, true);
      }
      data = out;
      break;
    }
    case "int32": {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getInt32(i * 4, true);
      data = out;
      break;
    }
    case "uint8":
      data = Uint8Array.from(bytes); // a copy: never aliases the message's buffer
      break;
  }
  return { shape: dims, dtype: name, data };
}

/** Decodes a Tensor message (see decodeBytes). */
export function decodeTensor(tensor: Tensor): DecodedTensor {
  return decodeBytes(tensor.data, tensor.shape, tensor.dtype);
}

/** Decodes a Tensor message that must hold floating-point values (float32, float16, bfloat16). */
export function decodeFloatTensor(tensor: Tensor): DecodedTensor<Float32Array> {
  const decoded = decodeTensor(tensor);
  if (!(decoded.data instanceof Float32Array)) {
    throw new TensorDecodeError(`expected a floating-point tensor, got ${decoded.dtype}`);
  }
  return decoded as DecodedTensor<Float32Array>;
}

/** Decodes a Tensor message that must hold int32 values. */
export function decodeInt32Tensor(tensor: Tensor): DecodedTensor<Int32Array> {
  const decoded = decodeTensor(tensor);
  if (decoded.dtype !== "int32") throw new TensorDecodeError(`expected an int32 tensor, got ${decoded.dtype}`);
  return decoded as DecodedTensor<Int32Array>;
}
