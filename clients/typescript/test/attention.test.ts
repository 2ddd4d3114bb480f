/** Unit tests of attention assembly's refusals: streams that leave part of a layer out. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { create } from "@bufbuild/protobuf";
import { AssemblyError, AttentionAssembler } from "../src/attention.js";
import { pb } from "../src/index.js";

/** A header for one input of `tokens` tokens, and a float32 chunk of `heads` x tokens x tokens. */
function stream(tokens: number, heads: number[], complete = true) {
  const header = create(pb.StreamAttentionResponseSchema, {
    payload: { case: "header", value: { model: "m", inputs: [{ inputIndex: 0, tokenIds: [...Array(tokens).keys()].map(BigInt), tokens: [...Array(tokens)].map((_, i) => `t${i}`) }] } },
  });
  const data = new Uint8Array(new Float32Array(heads.length * tokens * tokens).fill(0.25).buffer);
  const chunk = create(pb.StreamAttentionResponseSchema, {
    payload: { case: "chunk", value: { inputIndex: 0, layer: 0, heads, queryStart: 0, queryEnd: tokens, layerComplete: complete,
      values: { shape: [heads.length, tokens, tokens].map(BigInt), dtype: pb.Dtype.FLOAT32, data } } },
  });
  return [header, chunk];
}

test("a layer carrying only some of the requested heads is refused, naming both sets", () => {
  const assembler = new AttentionAssembler("heads", [3, 1, 7]);
  assert.throws(() => { for (const message of stream(4, [3, 1])) assembler.add(message); },
    (error: unknown) => error instanceof AssemblyError && /heads 1,3, but heads 1,3,7 were requested/.test(error.message));
});

test("the requested heads all present assemble in the requested order", () => {
  const assembler = new AttentionAssembler("heads", [3, 1]);
  for (const message of stream(4, [3, 1])) assembler.add(message);
  const result = assembler.result();
  assert.deepEqual(result.inputs[0].heads, [3, 1]);
  assert.deepEqual(result.inputs[0].layers.get(0)!.shape, [2, 4, 4]);
});

test("a chunk before the header and a second header are refused", () => {
  const [header, chunk] = stream(4, [0]);
  assert.throws(() => new AttentionAssembler().add(chunk), AssemblyError);
  const twice = new AttentionAssembler();
  twice.add(header);
  assert.throws(() => twice.add(header), AssemblyError);
});
