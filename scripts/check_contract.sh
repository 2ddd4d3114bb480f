#!/usr/bin/env bash
# Contract checks, offline (buf from package.json: `npm ci --no-audit --no-fund`):
#   0. buf format: the .proto files are laid out as `buf format -w` writes them (the diff
#      is printed when they are not);
#   1. buf lint over protos/ (buf.yaml: STANDARD, exceptions explained there);
#   2. buf breaking against every released contract committed under protos/released/
#      (images made by `buf build -o protos/released/introspect-vX.Y.Z.binpb` at release);
#   3. buf breaking against the latest v* git tag, when the checkout has one.
# Exits non-zero on the first failure; exits 2 when buf is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."
buf=${BUF:-node_modules/.bin/buf}
if [[ ! -x $buf ]]; then
  echo "buf not found at $buf: run 'npm ci --no-audit --no-fund' at the repository root" >&2
  exit 2
fi

if ! "$buf" format -d --exit-code; then
  echo "buf format: the contract is not formatted: run '$buf format -w'" >&2
  exit 1
fi
echo "buf format: ok"

"$buf" lint
echo "buf lint: ok"

shopt -s nullglob
released=(protos/released/*.binpb)
if ((${#released[@]} == 0)); then
  echo "no released contract under protos/released/" >&2
  exit 1
fi
for image in "${released[@]}"; do
  "$buf" breaking --against "$image"
  echo "buf breaking against $image: ok"
done

tag=$(git describe --tags --abbrev=0 --match 'v*' 2>/dev/null || true)
if [[ -n $tag ]]; then
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  git archive "$tag" -- protos $(git ls-tree --name-only "$tag" -- buf.yaml) | tar -x -C "$scratch"
  against=$scratch
  [[ -f $scratch/buf.yaml ]] || against=$scratch/protos
  "$buf" breaking --against "$against"
  echo "buf breaking against tag $tag: ok"
fi
