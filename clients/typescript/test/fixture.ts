/**
 * The test fixture: a real introspect server (test/fixture_server.py: TLS, a bearer token,
 * MiniLM and a tiny GPT-2) and reference results from the Python client (test/reference.py).
 * Python is $INTROSPECT_PYTHON, else `python` (scripts/test.sh activates the venv).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ScalarType, type DescMessage } from "@bufbuild/protobuf";
import { decodeTensor } from "../src/index.js";

export const PACKAGE_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", ".."); // dist/test -> package
export const PYTHON = process.env.INTROSPECT_PYTHON ?? "python";
const READY = /introspect serving .* on (\S+:\d+)/;
const START_TIMEOUT_MS = 180_000;

export interface Fixture {
  address: string;
  ca: Buffer;
  caPath: string;
  token: string;
  output: string[];
  stop(): Promise<void>;
}

/** Starts the fixture server and waits for its ready line. */
export async function startServer(): Promise<Fixture> {
  const work = mkdtempSync(join(tmpdir(), "introspect-ts-test-"));
  const child: ChildProcess = spawn(PYTHON, [join(PACKAGE_ROOT, "test", "fixture_server.py"), work], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, PYTHONUNBUFFERED: "1" },
  });
  const output: string[] = [];
  let fixture: { ca: string; token: string } | undefined;
  const address = await new Promise<string>((resolveAddress, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${output.join("")}`)), START_TIMEOUT_MS);
    let pending = "";
    const take = (data: Buffer) => {
      pending += data.toString();
      const lines = pending.split("\n");
      pending = lines.pop() ?? "";
      for (const line of lines) {
        output.push(line + "\n");
        if (line.startsWith("FIXTURE ")) fixture = JSON.parse(line.slice("FIXTURE ".length));
        const match = READY.exec(line);
        if (match) {
          clearTimeout(timer);
          resolveAddress(match[1]);
        }
      }
    };
    child.stdout!.on("data", take);
    child.stderr!.on("data", take);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`server exited with ${code}:\n${output.join("")}`)); // a no-op once started
    });
  });
  if (!fixture) throw new Error(`no FIXTURE line:\n${output.join("")}`);
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  return {
    address,
    ca: readFileSync(fixture.ca),
    caPath: fixture.ca,
    token: fixture.token,
    output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        const killer = setTimeout(() => child.kill("SIGKILL"), 20_000);
        await exited;
        clearTimeout(killer);
      }
      rmSync(work, { recursive: true, force: true });
    },
  };
}

/** A reference case for test/reference.py. */
export type ReferenceCase =
  | { name: string; attention: Record<string, unknown> }
  | { name: string; rpc: string; request: Record<string, unknown>; unary?: boolean };

/** Runs test/reference.py (the Python client) over `cases`; resolves to {name: result}. */
export function pythonReference(fixture: Fixture, cases: ReferenceCase[]): Promise<Record<string, any>> {
  const child = spawn(PYTHON, [join(PACKAGE_ROOT, "test", "reference.py"), fixture.address, fixture.caPath, fixture.token], {
    stdio: ["pipe", "pipe", "pipe"],
  });
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  child.stdout!.on("data", (data: Buffer) => stdout.push(data));
  child.stderr!.on("data", (data: Buffer) => stderr.push(data));
  child.stdin!.end(JSON.stringify(cases));
  return new Promise((resolveResult, reject) => {
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) reject(new Error(`reference.py failed (${code}):\n${Buffer.concat(stderr).toString()}`));
      else resolveResult(JSON.parse(Buffer.concat(stdout).toString()));
    });
  });
}

function number(value: number): number | string {
  if (Number.isNaN(value)) return "NaN";
  return Number.isFinite(value) ? value : value > 0 ? "Infinity" : "-Infinity";
}

function scalar(type: ScalarType, value: unknown): unknown {
  if (typeof value === "bigint") return Number(value);
  if (type === ScalarType.BYTES) return Buffer.from(value as Uint8Array).toString("base64");
  if (typeof value === "number") return number(value);
  return value;
}

/** A message as plain JSON, built as test/reference.py builds it from Python's messages:
 * JSON field names, unset message/optional/oneof fields null, int64 and enums as numbers,
 * bytes as base64, Tensors decoded by this client's decodeTensor. */
export function plain(schema: DescMessage, message: any): any {
  if (schema.typeName === "introspect.v1.Tensor") {
    const tensor = decodeTensor(message);
    return { shape: tensor.shape, dtype: tensor.dtype, data: Array.from(tensor.data, number) };
  }
  const out: Record<string, unknown> = {};
  for (const field of schema.fields) {
    let value: any;
    if (field.oneof) {
      const chosen = message[field.oneof.localName];
      value = chosen.case === field.localName ? chosen.value : undefined;
    } else {
      value = message[field.localName];
    }
    switch (field.fieldKind) {
      case "list":
        out[field.jsonName] = (value as unknown[]).map((item) =>
          field.listKind === "message" ? plain(field.message, item) : field.listKind === "scalar" ? scalar(field.scalar, item) : item);
        break;
      case "message":
        out[field.jsonName] = value === undefined ? null : plain(field.message, value);
        break;
      case "enum":
        out[field.jsonName] = value === undefined ? null : value;
        break;
      case "scalar":
        out[field.jsonName] = value === undefined ? null : scalar(field.scalar, value);
        break;
      default:
        throw new Error(`map field ${field.name}: not handled`);
    }
  }
  return out;
}

/** Deep comparison with a relative tolerance on numbers; throws naming the first difference. */
export function assertClose(actual: unknown, expected: unknown, tolerance = 1e-6, path = "$"): void {
  if (typeof expected === "number" && typeof actual === "number") {
    if (Math.abs(actual - expected) > tolerance * Math.max(1, Math.abs(expected))) {
      throw new Error(`${path}: ${actual} != ${expected}`);
    }
    return;
  }
  if (Array.isArray(expected)) {
    if (!Array.isArray(actual) || actual.length !== expected.length) {
      throw new Error(`${path}: length ${Array.isArray(actual) ? actual.length : typeof actual} != ${expected.length}`);
    }
    expected.forEach((item, index) => assertClose(actual[index], item, tolerance, `${path}[${index}]`));
    return;
  }
  if (expected !== null && typeof expected === "object") {
    if (actual === null || typeof actual !== "object") throw new Error(`${path}: ${JSON.stringify(actual)} is not an object`);
    const keys = new Set([...Object.keys(expected), ...Object.keys(actual)]);
    for (const key of keys) assertClose((actual as any)[key], (expected as any)[key], tolerance, `${path}.${key}`);
    return;
  }
  if (actual !== expected) throw new Error(`${path}: ${JSON.stringify(actual)} != ${JSON.stringify(expected)}`);
}
