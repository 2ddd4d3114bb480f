/**
 * End-to-end tests of the TypeScript client against a real server (no mocks), compared
 * with what the Python client gets for the same requests.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { after, before, describe, test } from "node:test";
import { fromJson, type DescMessage, type JsonObject } from "@bufbuild/protobuf";
import { IntrospectClient, IntrospectError, pb, status, type AttentionResult } from "../src/index.js";
import { assertClose, PACKAGE_ROOT, plain, pythonReference, startServer, type Fixture, type ReferenceCase } from "./fixture.js";

const LONG = "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat, " +
  "and a small bird sings from the old oak tree near the river bank in the early morning light.";
const SHORT = "The cat sat on the mat.";
/** The server certificate names localhost (and 127.0.0.1, which TLS SNI cannot carry). */
const SERVER_NAME = { "grpc.ssl_target_name_override": "localhost" };

function text(value: string) {
  return { source: { case: "text" as const, value: { text: value } } };
}

/** Attention cases: the Python client's kwargs and the same request for this client. */
const ATTENTION = {
  // 12 heads x ~45 tokens: a layer is larger than the server's 64 KiB messages, so chunked
  heads_chunked: {
    python: { inputs: LONG, model: "minilm", layers: [0, 5], heads: [3, 1, 7, 0, 2, 4, 5, 6, 8, 9, 10, 11] },
    request: { model: "minilm", inputs: [text(LONG)], layers: [0, 5], heads: [3, 1, 7, 0, 2, 4, 5, 6, 8, 9, 10, 11] },
  },
  float16_batch: {
    python: { inputs: [LONG, SHORT], model: "minilm", view: "head_mean", dtype: "float16", query_start: -5 },
    request: { model: "minilm", inputs: [text(LONG), text(SHORT)], view: pb.AttentionView.HEAD_MEAN, dtype: pb.Dtype.FLOAT16, queryStart: -5 },
  },
  bfloat16_top_k: {
    python: { inputs: SHORT, model: "gpt2", heads: [2, 0], dtype: "bfloat16", top_k: 3, query_start: 2, query_end: 6 },
    request: { model: "gpt2", inputs: [text(SHORT)], heads: [2, 0], dtype: pb.Dtype.BFLOAT16, topK: 3, queryStart: 2, queryEnd: 6 },
  },
} as const;

/** Stream and unary cases as proto3 JSON, parsed by both clients. */
const RPCS: { name: string; rpc: string; schema: DescMessage; request: JsonObject; unary?: boolean }[] = [
  { name: "list_models", rpc: "ListModels", schema: pb.ListModelsRequestSchema, request: {}, unary: true },
  { name: "get_model", rpc: "GetModel", schema: pb.GetModelRequestSchema, request: { name: "gpt2" }, unary: true },
  { name: "server_info", rpc: "GetServerInfo", schema: pb.GetServerInfoRequestSchema, request: {}, unary: true },
  { name: "saliency_gradient", rpc: "StreamSaliency", schema: pb.StreamSaliencyRequestSchema,
    request: { model: "minilm", input: { text: { text: SHORT } }, target: { embeddingNorm: {} }, method: "SALIENCY_METHOD_GRADIENT" } },
  { name: "saliency_ig", rpc: "StreamSaliency", schema: pb.StreamSaliencyRequestSchema,
    request: { model: "gpt2", input: { text: { text: SHORT } }, target: { nextToken: {} }, method: "SALIENCY_METHOD_INTEGRATED_GRADIENTS",
      integratedGradients: { steps: 8 } } },
  { name: "head_ablation", rpc: "StreamHeadAblation", schema: pb.StreamHeadAblationRequestSchema,
    request: { model: "gpt2", input: { text: { text: "The cat sat on the" } }, target: { nextToken: {} }, mode: "ABLATION_MODE_PER_HEAD", value: "ABLATION_VALUE_ZERO" } },
  { name: "logit_lens", rpc: "StreamLogitLens", schema: pb.StreamLogitLensRequestSchema,
    request: { model: "gpt2", input: { text: { text: "The cat sat on the" } }, topK: 3 } },
  { name: "patching", rpc: "StreamPatching", schema: pb.StreamPatchingRequestSchema,
    request: { model: "gpt2", pairs: [{ clean: { text: { text: "The cat sat on the" } }, corrupted: { text: { text: "The dog sat on the" } } }],
      target: { nextToken: {} }, method: "PATCHING_METHOD_ACTIVATION", metric: "PATCHING_METRIC_TARGET", direction: "PATCH_DIRECTION_DENOISING" } },
  { name: "shapley_heads", rpc: "StreamShapleyHeads", schema: pb.StreamShapleyHeadsRequestSchema,
    request: { model: "gpt2", input: { text: { text: "The cat sat on the" } }, target: { nextToken: {} },
      heads: [{ layer: 0, head: 1 }, { layer: 1, head: 2 }, { layer: 2, head: 0 }] } },
  { name: "query_key", rpc: "StreamQueryKeyEmbeddings", schema: pb.StreamQueryKeyEmbeddingsRequestSchema,
    request: { model: "gpt2", inputs: [{ text: { text: SHORT } }, { text: { text: "The cat sat on the" } }], layers: [1], heads: [0, 2], includeVectors: true } },
  { name: "head_statistics", rpc: "StreamHeadStatistics", schema: pb.StreamHeadStatisticsRequestSchema,
    request: { model: "gpt2", inputs: [{ text: { text: SHORT } }, { text: { text: "The cat sat on the" } }],
      statistics: ["HEAD_STATISTIC_ENTROPY", "HEAD_STATISTIC_PREVIOUS_TOKEN", "HEAD_STATISTIC_INDUCTION"], inductionLength: 6, inductionSamples: 2 } },
];

/** An AttentionResult as the plain JSON test/reference.py makes of the Python client's. */
function attentionJson(result: AttentionResult): unknown {
  const arrays = (layers: Map<number, { shape: number[]; data: Float32Array | Int32Array }>) =>
    Object.fromEntries([...layers].map(([layer, array]) => [String(layer), { shape: array.shape, data: Array.from(array.data) }]));
  return {
    model: result.model, fingerprint: result.fingerprint, cached: result.cached,
    inputs: result.inputs.map((item) => ({
      tokens: item.tokens, tokenIds: item.tokenIds, truncated: item.truncated, originalLength: item.originalLength,
      view: item.view, heads: item.heads, queryStart: item.queryStart, layers: arrays(item.layers), keyIndices: arrays(item.keyIndices),
    })),
  };
}

async function rejection(promise: Promise<unknown>): Promise<IntrospectError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof IntrospectError, `expected an IntrospectError, got ${error}`);
    return error;
  }
  assert.fail("the call succeeded");
}

describe("IntrospectClient against a real server", () => {
  let fixture: Fixture;
  let client: IntrospectClient;
  let reference: Record<string, any>;

  before(async () => {
    fixture = await startServer();
    client = new IntrospectClient(fixture.address, { tls: { rootCerts: fixture.ca }, token: fixture.token, timeoutMs: 120_000, channelOptions: SERVER_NAME });
    const cases: ReferenceCase[] = [
      ...Object.entries(ATTENTION).map(([name, item]) => ({ name, attention: item.python as Record<string, unknown> })),
      ...RPCS.map(({ name, rpc, request, unary }) => ({ name, rpc, request, unary })),
    ];
    reference = await pythonReference(fixture, cases);
  });

  after(async () => {
    client?.close();
    await fixture?.stop();
  });

  for (const [name, item] of Object.entries(ATTENTION)) {
    test(`attention ${name} matches the Python client`, async () => {
      const result = await client.attention(item.request as any);
      assertClose(attentionJson(result), reference[name], 0);
    });
  }

  test("attention layers arrive in several chunks and assemble to one typed array per layer", async () => {
    const chunks = new Map<number, number>();
    for await (const message of client.streamAttention(ATTENTION.heads_chunked.request as any)) {
      if (message.payload.case === "chunk") chunks.set(message.payload.value.layer, (chunks.get(message.payload.value.layer) ?? 0) + 1);
    }
    assert.ok([...chunks.values()].every((count) => count > 1), `chunks per layer: ${[...chunks]}`);
    const result = await client.attention(ATTENTION.heads_chunked.request as any);
    const layer = result.inputs[0].layers.get(5)!;
    const tokens = result.inputs[0].tokens.length;
    assert.deepEqual(layer.shape, [12, tokens, tokens]);
    assert.ok(layer.data instanceof Float32Array && layer.data.length === 12 * tokens * tokens);
    const rowSum = layer.data.subarray(0, tokens).reduce((sum, value) => sum + value, 0);
    assert.ok(Math.abs(rowSum - 1) < 1e-4, `a probability row sums to ${rowSum}`);
  });

  for (const item of RPCS) {
    test(`${item.rpc} (${item.name}) matches the Python client`, async () => {
      const request = fromJson(item.schema, item.request) as any;
      const rpc = (client.rpc as any)[item.rpc[0].toLowerCase() + item.rpc.slice(1)];
      if (item.unary) {
        const response = await rpc(request);
        const schema = (pb as any)[`${response.$typeName.split(".").pop()}Schema`]; // e.g. pb.GetModelResponseSchema
        assertClose(plain(schema, response), reference[item.name]);
        return;
      }
      const messages = [];
      for await (const message of rpc(request)) messages.push(message);
      const schema = pb.file_introspect_v1_introspect.messages.find((m) => m.name === `${item.rpc}Response`)!;
      assert.ok(messages.length >= 2, `${messages.length} messages`);
      assertClose(messages.map((message) => plain(schema, message)), reference[item.name]);
    });
  }

  test("named methods cover every RPC of the service", async () => {
    const names = pb.Introspection.methods.map((method) => method.localName);
    for (const name of names) assert.equal(typeof (client.rpc as any)[name], "function", name);
    assert.deepEqual((await client.listModels()).map((model) => model.name).sort(), ["gpt2", "minilm"]);
    const info = await client.serverInfo();
    assert.match(info.serverVersion, /^\d+\.\d+\.\d+/);
    assert.match(info.contractVersion, /^\d+\.\d+\.\d+/);
    const gpt2 = await client.getModel("gpt2");
    assert.equal(gpt2.numLayers, 3);
    assert.equal(gpt2.numHeads, 4);
  });

  test("bad input: INVALID_ARGUMENT with the BadRequest field violations", async () => {
    const error = await rejection(client.attention({ model: "minilm", inputs: [text(SHORT)], layers: [99] }));
    assert.equal(error.code, status.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.ok(error.fieldViolations.length > 0, "no field violations");
    assert.ok(error.fieldViolations.some((violation) => violation.field.includes("layers")), JSON.stringify(error.fieldViolations));
    assert.match(error.message, /^INVALID_ARGUMENT: /);
  });

  test("unknown model: NOT_FOUND", async () => {
    const error = await rejection(client.getModel("no-such-model"));
    assert.equal(error.code, status.NOT_FOUND);
    assert.deepEqual(error.fieldViolations, []);
  });

  test("streams fail with IntrospectError too", async () => {
    const consume = async () => {
      for await (const _ of client.streamLogitLens({ model: "no-such-model", input: text(SHORT) })) { /* nothing */ }
    };
    const error = await rejection(consume());
    assert.equal(error.code, status.NOT_FOUND);
  });

  test("without the bearer token: UNAUTHENTICATED; a bad token is refused before sending", async () => {
    const anonymous = new IntrospectClient(fixture.address, { tls: { rootCerts: fixture.ca }, channelOptions: SERVER_NAME });
    try {
      const error = await rejection(anonymous.listModels());
      assert.equal(error.code, status.UNAUTHENTICATED);
    } finally {
      anonymous.close();
    }
    assert.throws(() => new IntrospectClient(fixture.address, { token: "has space" }), /printable ASCII/);
  });

  test("TLS: a server certificate from an untrusted CA fails the call", async () => {
    const untrusting = new IntrospectClient(fixture.address, { tls: true, token: fixture.token, timeoutMs: 10_000, channelOptions: SERVER_NAME });
    try {
      const error = await rejection(untrusting.listModels());
      assert.equal(error.code, status.UNAVAILABLE);
    } finally {
      untrusting.close();
    }
  });

  test("leaving a stream early cancels it; an aborted signal cancels a call", async () => {
    let seen = 0;
    for await (const _ of client.streamAttention(ATTENTION.heads_chunked.request as any)) {
      seen += 1;
      break;
    }
    assert.equal(seen, 1);
    const controller = new AbortController();
    const consume = async () => {
      for await (const message of client.streamAttention(ATTENTION.heads_chunked.request as any, { signal: controller.signal })) {
        if (message.payload.case === "header") controller.abort();
      }
    };
    const error = await rejection(consume());
    assert.equal(error.code, status.CANCELLED);
    const early = await rejection(client.listModels({ signal: AbortSignal.abort() }));
    assert.equal(early.code, status.CANCELLED);
    assert.equal((await client.listModels()).length, 2); // the channel still works
  });

  test("the README example (examples/quickstart.ts, shown in docs/clients.md) runs", async () => {
    const { stdout } = await promisify(execFile)(process.execPath, [join(PACKAGE_ROOT, "dist", "examples", "quickstart.js")], {
      env: { ...process.env, INTROSPECT_SERVER: fixture.address, INTROSPECT_TLS_CA: fixture.caPath, INTROSPECT_TOKEN: fixture.token,
        NODE_NO_WARNINGS: "1" },
      timeout: 120_000,
    });
    assert.match(stdout, /\[ 'gpt2', 'minilm' \]/);
    assert.match(stdout, /\[ 2, 9, 9 \]/);
    assert.match(stdout, /Float32Array\(9\)/);
    assert.match(stdout, /INVALID_ARGUMENT/);
    assert.match(stdout, /field: 'layers'/);
  });
});

test("docs/clients.md shows examples/quickstart.ts verbatim under ## TypeScript", () => {
  const docs = readFileSync(join(PACKAGE_ROOT, "..", "..", "docs", "clients.md"), "utf8");
  const section = docs.slice(docs.indexOf("\n## TypeScript"));
  assert.ok(docs.includes("\n## TypeScript"), "no ## TypeScript section");
  const block = /```ts\n([\s\S]*?)```/.exec(section);
  assert.ok(block, "no ```ts block in the TypeScript section");
  const example = readFileSync(join(PACKAGE_ROOT, "examples", "quickstart.ts"), "utf8").replace('"../src/index.js"', '"@introspect/client"');
  assert.equal(block[1], example);
});

test("the README's TypeScript excerpt is lines of examples/quickstart.ts", () => {
  const readme = readFileSync(join(PACKAGE_ROOT, "..", "..", "README.md"), "utf8");
  const section = readme.slice(readme.indexOf("### TypeScript client"));
  const block = /```ts\n([\s\S]*?)```/.exec(section);
  assert.ok(block, "no ```ts block in the README's TypeScript section");
  const example = readFileSync(join(PACKAGE_ROOT, "examples", "quickstart.ts"), "utf8").split("\n");
  for (const line of block[1].replace('"@introspect/client"', '"../src/index.js"').split("\n")) {
    if (!line.trim()) continue;
    if (line.startsWith("import ")) {
      assert.ok(example.some((other) => other.startsWith("import {") && other.includes("../src/index.js")), line);
      continue;
    }
    assert.ok(example.includes(line), `README line not in examples/quickstart.ts: ${line}`);
  }
});
