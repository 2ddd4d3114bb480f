// Regenerates src/gen (protobuf-es v2 TypeScript) from the contract in ../../protos and the
// vendored google/rpc protos in proto/, with the buf CLI and protoc-gen-es pinned in this
// package's lock file.
//
//   npm run generate              writes src/gen (new RPCs, messages and fields included)
//   npm run generate -- --check   exits 1 when the committed src/gen is stale
//
// Every .proto under ../../protos is generated, so a contract that gains a file, an RPC or
// a field is picked up by re-running `npm run generate` (then `npm run build`).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, mkdirSync, writeFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const target = join(root, "src", "gen");
const check = process.argv.includes("--check");

function files(directory) {
  const found = new Map();
  const walk = (current) => {
    let entries;
    try {
      entries = readdirSync(current);
    } catch {
      return;
    }
    for (const name of entries) {
      const path = join(current, name);
      if (statSync(path).isDirectory()) walk(path);
      else found.set(relative(directory, path), readFileSync(path, "utf8"));
    }
  };
  walk(directory);
  return found;
}

const scratch = mkdtempSync(join(tmpdir(), "introspect-ts-gen-"));
try {
  const buf = join(root, "node_modules", ".bin", process.platform === "win32" ? "buf.cmd" : "buf");
  execFileSync(buf, ["generate", "--template", "buf.gen.yaml", "-o", scratch], { cwd: root, stdio: "inherit" });
  const generated = files(join(scratch, "src", "gen"));
  if (generated.size === 0) throw new Error("buf generate produced no files");
  const committed = files(target);
  if (check) {
    const stale = [...generated].filter(([name, text]) => committed.get(name) !== text).map(([name]) => name);
    const extra = [...committed.keys()].filter((name) => !generated.has(name));
    if (stale.length || extra.length) {
      console.error(`generated code is stale: ${[...stale, ...extra].sort().join(", ")}; run npm run generate in clients/typescript`);
      process.exit(1);
    }
    console.log(`src/gen is up to date (${generated.size} files)`);
  } else {
    rmSync(target, { recursive: true, force: true });
    for (const [name, text] of generated) {
      mkdirSync(dirname(join(target, name)), { recursive: true });
      writeFileSync(join(target, name), text);
    }
    console.log(`wrote ${generated.size} files to src/gen`);
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
