export * from "./client.js";
export * from "./errors.js";
export * from "./tensors.js";
export * from "./attention.js";
export * as pb from "./gen/introspect/v1/introspect_pb.js";
export { status } from "@grpc/grpc-js";
