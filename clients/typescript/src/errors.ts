/**
 * IntrospectError: every failed call, with its gRPC status code, message and the field
 * violations of a google.rpc.BadRequest detail.
 *
 * The server sends INVALID_ARGUMENT with a google.rpc.Status (serialized) in the trailing
 * metadata key `grpc-status-details-bin`; its `details` hold a BadRequest naming the field.
 */
import { fromBinary } from "@bufbuild/protobuf";
import { anyIs, anyUnpack } from "@bufbuild/protobuf/wkt";
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema, type Status } from "./gen/google/rpc/status_pb.js";

export const STATUS_DETAILS_KEY = "grpc-status-details-bin";

/** One google.rpc.BadRequest field violation. */
export interface FieldViolation {
  field: string;
  description: string;
}

/** A call failed. `code` is the gRPC status code (grpc-js `status` enum), `codeName` its
 * name ("INVALID_ARGUMENT"), `details` the server's message, `fieldViolations` the
 * BadRequest field violations (empty when the server sent none). */
export class IntrospectError extends Error {
  override name = "IntrospectError";
  readonly codeName: string;

  constructor(
    readonly code: status,
    readonly details: string,
    readonly fieldViolations: FieldViolation[] = [],
    readonly metadata?: Metadata,
  ) {
    super(`${status[code] ?? `code ${code}`}: ${details}`);
    this.codeName = status[code] ?? String(code);
  }
}

/** The google.rpc.Status in trailing metadata, or undefined (absent or malformed). */
export function statusFromMetadata(metadata: Metadata | undefined): Status | undefined {
  const values = metadata?.get(STATUS_DETAILS_KEY) ?? [];
  for (const value of values) {
    if (typeof value === "string") continue;
    try {
      return fromBinary(StatusSchema, value);
    } catch {
      return undefined; // malformed detail: keep code and message only
    }
  }
  return undefined;
}

/** The (field, description) of every BadRequest field violation packed in `detail`. */
export function fieldViolationsOf(detail: Status | undefined): FieldViolation[] {
  const violations: FieldViolation[] = [];
  for (const any of detail?.details ?? []) {
    if (!anyIs(any, BadRequestSchema)) continue;
    const badRequest = anyUnpack(any, BadRequestSchema);
    for (const item of badRequest?.fieldViolations ?? []) {
      violations.push({ field: item.field, description: item.description });
    }
  }
  return violations;
}

function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as Partial<ServiceError>).code === "number" && "details" in error;
}

/** Converts what a grpc-js call threw (a ServiceError) into an IntrospectError; anything
 * else (a decoding error of this client, for instance) is returned unchanged. */
export function toIntrospectError(error: unknown): unknown {
  if (error instanceof IntrospectError || !isServiceError(error)) return error;
  const metadata = error.metadata instanceof Metadata ? error.metadata : undefined;
  return new IntrospectError(error.code, error.details ?? "", fieldViolationsOf(statusFromMetadata(metadata)), metadata);
}
