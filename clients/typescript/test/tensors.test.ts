/** Unit tests of tensor decoding: any byte offset, every dtype, bad input refused. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { decodeBytes, decodeTensor, float16ToNumber, pb, TensorDecodeError } from "../src/index.js";

/** `bytes` copied into a larger buffer at `offset`, as gRPC hands `bytes` fields over. */
function at(offset: number, bytes: number[]): Uint8Array {
  const buffer = Buffer.alloc(offset + bytes.length + 3, 0xee);
  buffer.set(bytes, offset);
  return buffer.subarray(offset, offset + bytes.length);
}

function le32(values: number[], write: (view: DataView, offset: number, value: number) => void): number[] {
  const view = new DataView(new ArrayBuffer(values.length * 4));
  values.forEach((value, index) => write(view, index * 4, value));
  return [...new Uint8Array(view.buffer)];
}

const FLOATS = [1.5, -2.25, 0, 3.140625, -0.0078125, 65504];
/** Both decoding paths of float32 and int32: one copy into an aligned buffer
 * (little-endian machines) and element by element through a DataView (big-endian ones). */
const PATHS = [{ dataView: false }, { dataView: true }];

for (const path of PATHS) test(`float32 at every byte offset (dataView: ${path.dataView})`, () => {
  const bytes = le32(FLOATS, (view, offset, value) => view.setFloat32(offset, value, true));
  for (let offset = 0; offset < 8; offset++) {
    const decoded = decodeBytes(at(offset, bytes), [2n, 3n], pb.Dtype.FLOAT32, path);
    assert.deepEqual(decoded.shape, [2, 3]);
    assert.equal(decoded.dtype, "float32");
    assert.ok(decoded.data instanceof Float32Array);
    assert.deepEqual(Array.from(decoded.data), FLOATS);
  }
});

for (const path of PATHS) test(`int32 at an odd offset (dataView: ${path.dataView})`, () => {
  const values = [0, -1, 2147483647, -2147483648, 42, 7];
  const decoded = decodeBytes(at(3, le32(values, (view, offset, value) => view.setInt32(offset, value, true))), [6], pb.Dtype.INT32, path);
  assert.ok(decoded.data instanceof Int32Array);
  assert.deepEqual(Array.from(decoded.data), values);
});

test("float16: normal, subnormal, signed zero, infinities and NaN, at an odd offset", () => {
  const bits = [0x3c00, 0xc000, 0x0001, 0x8000, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x3555];
  const bytes = bits.flatMap((value) => [value & 0xff, value >> 8]);
  const decoded = decodeBytes(at(1, bytes), [bits.length], pb.Dtype.FLOAT16);
  assert.ok(decoded.data instanceof Float32Array);
  const values = Array.from(decoded.data);
  assert.deepEqual(values.slice(0, 3), [1, -2, 2 ** -24]);
  assert.ok(Object.is(values[3], -0));
  assert.deepEqual(values.slice(4, 7), [65504, Infinity, -Infinity]);
  assert.ok(Number.isNaN(values[7]));
  assert.equal(values[8], Math.fround(0.333251953125));
  assert.equal(float16ToNumber(0x3555), 0.333251953125);
});

for (const path of PATHS) test(`bfloat16: the upper 16 bits of float32, at an odd offset (dataView: ${path.dataView})`, () => {
  const values = [1, -2.5, 3.140625, 1e30, -Infinity];
  const words = values.map((value) => {
    const view = new DataView(new ArrayBuffer(4));
    view.setFloat32(0, value, true);
    return view.getUint32(0, true) >>> 16;
  });
  const bytes = words.flatMap((word) => [word & 0xff, word >> 8]);
  const decoded = decodeBytes(at(5, bytes), [5], pb.Dtype.BFLOAT16, path);
  assert.deepEqual(Array.from(decoded.data).slice(0, 3), [1, -2.5, 3.140625]);
  assert.ok(Math.abs(decoded.data[3] / 1e30 - 1) < 1e-2);
  assert.equal(decoded.data[4], -Infinity);
});

test("decoded arrays never alias the message's buffer", () => {
  for (const dtype of [pb.Dtype.UINT8, pb.Dtype.FLOAT32, pb.Dtype.INT32, pb.Dtype.BFLOAT16, pb.Dtype.FLOAT16]) {
    const source = at(1, [1, 2, 3, 4]);
    const decoded = decodeBytes(source, dtype === pb.Dtype.UINT8 ? [4] : dtype === pb.Dtype.FLOAT32 || dtype === pb.Dtype.INT32 ? [1] : [2], dtype);
    const before = Array.from(decoded.data);
    source[0] = 99;
    assert.deepEqual(Array.from(decoded.data), before, `dtype ${dtype}`);
    assert.notEqual(decoded.data.buffer, source.buffer);
  }
});

test("a byte length that does not match shape x dtype is refused with a clear error", () => {
  assert.throws(() => decodeBytes(at(1, [0, 0, 0, 0, 0, 0, 0]), [2], pb.Dtype.FLOAT32),
    (error: Error) => error instanceof TensorDecodeError && /shape \[2\] and dtype float32 needs 8 bytes, got 7/.test(error.message));
  assert.throws(() => decodeBytes(new Uint8Array(6), [2, 2], pb.Dtype.FLOAT16), /needs 8 bytes, got 6/);
  assert.equal(decodeBytes(new Uint8Array(4), [], pb.Dtype.INT32).data.length, 1);
  assert.throws(() => decodeBytes(new Uint8Array(0), [-1], pb.Dtype.FLOAT32), /invalid tensor shape/);
});

test("unknown and unspecified dtypes raise, never return garbage", () => {
  assert.throws(() => decodeBytes(new Uint8Array(4), [1], 0), (error: Error) => error instanceof TensorDecodeError && /unknown tensor dtype 0/.test(error.message));
  assert.throws(() => decodeBytes(new Uint8Array(4), [1], 17), /unknown tensor dtype 17/);
  assert.throws(() => decodeBytes(new Uint8Array(4), [1], "float64" as any), /unknown tensor dtype float64/);
  const tensor = create(pb.TensorSchema, { shape: [1n], dtype: 9 as pb.Dtype, data: new Uint8Array(4) });
  assert.throws(() => decodeTensor(tensor), TensorDecodeError);
});
