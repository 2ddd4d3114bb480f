/**
 * IntrospectClient: the introspect.v1.Introspection service on @grpc/grpc-js.
 *
 * `client.rpc` holds one typed function per RPC of the generated service descriptor
 * (src/gen), so an RPC added to the contract appears there after `npm run generate`:
 * unary RPCs return a Promise of the response, server-streaming RPCs an async iterable of
 * the messages. The named methods (listModels, getModel, streamAttention, ...) and the
 * assembled `attention` are built on it. Every failure is an IntrospectError.
 */
import { create, fromBinary, toBinary, type DescMethod, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import type { GenService, GenServiceMethods } from "@bufbuild/protobuf/codegenv2";
import * as grpc from "@grpc/grpc-js";
import { AttentionAssembler, viewName, type AttentionResult } from "./attention.js";
import { toIntrospectError } from "./errors.js";
import {
  Introspection,
  StreamAttentionRequestSchema,
  type ModelInfo,
} from "./gen/introspect/v1/introspect_pb.js";

const MIB = 1024 * 1024;
/** Default largest message the client receives and sends (the server's default is 4 MiB). */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * MIB;

/** The default service config, as the Python client's: round_robin over every address the
 * target resolves to, and gRPC retries (3 attempts) on UNAVAILABLE before a response starts. */
export const DEFAULT_SERVICE_CONFIG = {
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [
    {
      name: [{ service: Introspection.typeName }],
      retryPolicy: {
        maxAttempts: 3,
        initialBackoff: "0.1s",
        maxBackoff: "1s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
};

/** TLS settings: PEM bytes (Buffer). No rootCerts: the system's roots. certChain and
 * privateKey together: a client certificate (mutual TLS). */
export interface TlsOptions {
  rootCerts?: Buffer;
  privateKey?: Buffer;
  certChain?: Buffer;
}

export interface ClientOptions {
  /** true or TlsOptions for a TLS channel; false (the default) for plaintext. */
  tls?: boolean | TlsOptions;
  /** Channel credentials built by the caller; overrides `tls`. */
  credentials?: grpc.ChannelCredentials;
  /** Bearer token sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Default deadline of every call, in milliseconds (none when unset). */
  timeoutMs?: number;
  /** Metadata sent with every call. */
  metadata?: Record<string, string>;
  /** Largest message received and sent (default 64 MiB). */
  maxMessageBytes?: number;
  /** gRPC service config (default DEFAULT_SERVICE_CONFIG; null for gRPC's own defaults). */
  serviceConfig?: object | null;
  /** Further channel options (e.g. "grpc.ssl_target_name_override"); override the others. */
  channelOptions?: grpc.ChannelOptions;
}

/** Per-call options. */
export interface CallOptions {
  /** Deadline in milliseconds (default: the client's). */
  timeoutMs?: number;
  /** Metadata added to the client's for this call. */
  metadata?: Record<string, string>;
  /** Cancels the call when aborted. */
  signal?: AbortSignal;
}

type MethodFunction<M> = M extends { methodKind: "unary"; input: infer I extends import("@bufbuild/protobuf").DescMessage; output: infer O extends import("@bufbuild/protobuf").DescMessage }
  ? (request?: MessageInitShape<I>, options?: CallOptions) => Promise<MessageShape<O>>
  : M extends { methodKind: "server_streaming"; input: infer I extends import("@bufbuild/protobuf").DescMessage; output: infer O extends import("@bufbuild/protobuf").DescMessage }
    ? (request?: MessageInitShape<I>, options?: CallOptions) => AsyncIterable<MessageShape<O>>
    : never;

/** One typed function per RPC of a generated service. */
export type Rpcs<T extends GenServiceMethods> = { [K in keyof T]: MethodFunction<T[K]> };

type IntrospectionMethods = typeof Introspection extends GenService<infer T> ? T : never;

/** Checks a bearer token the way the Python client does (without echoing it). */
export function bearerValue(token: string): string {
  if (!token || !/^[\x21-\x7e]+$/.test(token)) {
    throw new TypeError("the token must be non-empty printable ASCII without spaces");
  }
  return `Bearer ${token}`;
}

function credentialsOf(options: ClientOptions): grpc.ChannelCredentials {
  if (options.credentials) return options.credentials;
  if (!options.tls) return grpc.credentials.createInsecure();
  const tls = options.tls === true ? {} : options.tls;
  return grpc.credentials.createSsl(tls.rootCerts ?? null, tls.privateKey ?? null, tls.certChain ?? null);
}

export class IntrospectClient {
  /** One function per RPC of the service, typed from the generated descriptor. */
  readonly rpc: Rpcs<IntrospectionMethods>;
  private readonly channel: grpc.Client;
  private readonly metadata: Record<string, string>;
  private readonly timeoutMs?: number;

  constructor(readonly target: string, options: ClientOptions = {}) {
    const maxBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
    if (!(maxBytes > 0)) throw new RangeError(`maxMessageBytes must be positive, got ${maxBytes}`);
    const serviceConfig = options.serviceConfig === undefined ? DEFAULT_SERVICE_CONFIG : options.serviceConfig;
    const channelOptions: grpc.ChannelOptions = {
      "grpc.max_receive_message_length": maxBytes,
      "grpc.max_send_message_length": maxBytes,
      ...(serviceConfig ? { "grpc.service_config": JSON.stringify(serviceConfig), "grpc.enable_retries": 1 } : {}),
      ...options.channelOptions,
    };
    this.metadata = { ...options.metadata };
    if (options.token !== undefined) this.metadata.authorization = bearerValue(options.token);
    this.timeoutMs = options.timeoutMs;
    this.channel = new grpc.Client(target, credentialsOf(options), channelOptions);
    const rpc: Record<string, unknown> = {};
    for (const method of Introspection.methods) rpc[method.localName] = this.bind(method);
    this.rpc = rpc as Rpcs<IntrospectionMethods>;
  }

  /** Closes the channel. */
  close(): void {
    this.channel.close();
  }

  /** The models the server has loaded. */
  async listModels(options?: CallOptions): Promise<ModelInfo[]> {
    return (await this.rpc.listModels({}, options)).models;
  }

  /** The server's version and the contract version it serves (GetServerInfo). */
  async serverInfo(options?: CallOptions) {
    return this.rpc.getServerInfo({}, options);
  }

  /** Description of the model `name` ("" for the server's default model). */
  async getModel(name: string, options?: CallOptions): Promise<ModelInfo> {
    const response = await this.rpc.getModel({ name }, options);
    if (!response.model) throw new Error("the server answered GetModel without a model");
    return response.model;
  }

  /** The raw StreamAttention messages: a header, then chunks. Leaving the loop early cancels the call. */
  streamAttention(request: MessageInitShape<typeof StreamAttentionRequestSchema>, options?: CallOptions) {
    return this.rpc.streamAttention(request, options);
  }
  /** The raw StreamSaliency messages. */
  streamSaliency(...args: Parameters<IntrospectClient["rpc"]["streamSaliency"]>) {
    return this.rpc.streamSaliency(...args);
  }
  /** The raw StreamHeadAblation messages. */
  streamHeadAblation(...args: Parameters<IntrospectClient["rpc"]["streamHeadAblation"]>) {
    return this.rpc.streamHeadAblation(...args);
  }
  /** The raw StreamLogitLens messages. */
  streamLogitLens(...args: Parameters<IntrospectClient["rpc"]["streamLogitLens"]>) {
    return this.rpc.streamLogitLens(...args);
  }
  /** The raw StreamPatching messages. */
  streamPatching(...args: Parameters<IntrospectClient["rpc"]["streamPatching"]>) {
    return this.rpc.streamPatching(...args);
  }
  /** The raw StreamShapleyHeads messages: a header, the baseline, estimates, the final values. */
  streamShapleyHeads(...args: Parameters<IntrospectClient["rpc"]["streamShapleyHeads"]>) {
    return this.rpc.streamShapleyHeads(...args);
  }
  /** The raw StreamQueryKeyEmbeddings messages: a header, the points' labels, then each (layer, head)'s projection. */
  streamQueryKeyEmbeddings(...args: Parameters<IntrospectClient["rpc"]["streamQueryKeyEmbeddings"]>) {
    return this.rpc.streamQueryKeyEmbeddings(...args);
  }
  /** The raw StreamHeadStatistics messages: a header, then per batch each input's statistics and the running aggregate. */
  streamHeadStatistics(...args: Parameters<IntrospectClient["rpc"]["streamHeadStatistics"]>) {
    return this.rpc.streamHeadStatistics(...args);
  }

  /** Attention maps of one input or a batch, assembled into one Float32Array per (input, layer). */
  async attention(request: MessageInitShape<typeof StreamAttentionRequestSchema>, options?: CallOptions): Promise<AttentionResult> {
    const message = create(StreamAttentionRequestSchema, request);
    const assembler = new AttentionAssembler(viewName(message.view) ?? "heads", message.heads, message.queryStart, message.queryEnd);
    for await (const response of this.rpc.streamAttention(message, options)) assembler.add(response);
    return assembler.result();
  }

  private callArguments(options: CallOptions | undefined): [grpc.Metadata, grpc.CallOptions] {
    const metadata = new grpc.Metadata();
    for (const [key, value] of Object.entries({ ...this.metadata, ...options?.metadata })) metadata.set(key, value);
    const timeoutMs = options?.timeoutMs ?? this.timeoutMs;
    return [metadata, timeoutMs === undefined ? {} : { deadline: new Date(Date.now() + timeoutMs) }];
  }

  private bind(method: DescMethod): unknown {
    const path = `/${method.parent.typeName}/${method.name}`;
    const serialize = (value: any) => Buffer.from(toBinary(method.input, create(method.input, value)));
    const deserialize = (bytes: Buffer) => fromBinary(method.output, bytes);
    if (method.methodKind === "unary") {
      return (request: object = {}, options?: CallOptions) =>
        new Promise((resolve, reject) => {
          const [metadata, callOptions] = this.callArguments(options);
          const signal = options?.signal;
          const abort = () => call.cancel();
          const call = this.channel.makeUnaryRequest(path, serialize, deserialize, request, metadata, callOptions,
            (error, response) => {
              signal?.removeEventListener("abort", abort); // a long-lived signal keeps no listener per call
              if (error) reject(toIntrospectError(error));
              else resolve(response);
            });
          if (signal?.aborted) call.cancel();
          else signal?.addEventListener("abort", abort, { once: true });
        });
    }
    if (method.methodKind === "server_streaming") {
      const channel = this.channel;
      const callArguments = this.callArguments.bind(this);
      return (request: object = {}, options?: CallOptions) => ({
        async *[Symbol.asyncIterator]() {
          const [metadata, callOptions] = callArguments(options);
          const call = channel.makeServerStreamRequest(path, serialize, deserialize, request, metadata, callOptions);
          const abort = () => call.cancel();
          if (options?.signal?.aborted) call.cancel();
          else options?.signal?.addEventListener("abort", abort, { once: true });
          try {
            for await (const message of call) yield message;
          } catch (error) {
            throw toIntrospectError(error);
          } finally {
            options?.signal?.removeEventListener("abort", abort);
            call.cancel(); // a no-op once the call has ended; stops it when the loop is left early
          }
        },
      });
    }
    return () => {
      throw new Error(`${method.name}: ${method.methodKind} RPCs are not supported by this client`);
    };
  }
}
