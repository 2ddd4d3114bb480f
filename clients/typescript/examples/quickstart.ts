import { readFileSync } from "node:fs";
import { decodeTensor, IntrospectClient, IntrospectError, pb } from "../src/index.js";

const client = new IntrospectClient(process.env.INTROSPECT_SERVER ?? "127.0.0.1:50051", {
  tls: process.env.INTROSPECT_TLS_CA ? { rootCerts: readFileSync(process.env.INTROSPECT_TLS_CA) } : false,
  token: process.env.INTROSPECT_TOKEN, // sent as `authorization: Bearer ...`
  timeoutMs: 60_000,
});
const text = (value: string) => ({ source: { case: "text" as const, value: { text: value } } });
try {
  console.log((await client.listModels()).map((model) => model.name));
  const result = await client.attention({ model: "minilm", inputs: [text("The cat sat on the mat.")], layers: [5], heads: [0, 3] });
  const item = result.inputs[0];
  console.log(item.tokens);                        // the tokens as the model saw them
  const layer = item.layers.get(5)!;               // one Float32Array per (input, layer)
  const [, queries, keys] = layer.shape;           // [2, 9, 9]: [heads, query, key]
  console.log(layer.shape, layer.data[(1 * queries + 0) * keys + 2]); // head 3, query 0, key 2

  // Every RPC is an async iterable of typed messages (client.rpc has one function per RPC).
  for await (const message of client.streamSaliency({
    model: "minilm", input: text("The cat sat on the mat."),
    target: { kind: { case: "embeddingNorm", value: {} } }, method: pb.SaliencyMethod.GRADIENT,
  })) {
    if (message.payload.case === "chunk" && message.payload.value.final) {
      console.log(decodeTensor(message.payload.value.scores!).data); // Float32Array [tokens]
    }
  }
  await client.attention({ model: "minilm", inputs: [text("Hi")], layers: [99] });
} catch (error) {
  if (!(error instanceof IntrospectError)) throw error;
  console.log(error.codeName, error.details);      // INVALID_ARGUMENT layers ...
  console.log(error.fieldViolations);              // [{ field: "layers", description: "..." }]
} finally {
  client.close();
}
