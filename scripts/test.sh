#!/usr/bin/env bash
# The test command: installs everything the suite needs on a fresh machine, then runs it.
#   - Debian packages redis-server and prometheus (real servers the suite starts itself)
#   - Debian's chromium: the HTML view tests drive it headless over the DevTools protocol
#   - kubectl (kustomize v5 inside) to render deploy/kubernetes/overlays: the `kubectl`
#     package of the Kubernetes apt repository (pkgs.k8s.io) or Google Cloud's; Debian's
#     own kubernetes-client is too old (kustomize v2) for the manifests
#   - a virtual environment in .venv with the CPU build of torch and the dev extras
#   - buf (contract lint and breaking-change checks), pinned in package-lock.json
#   - the TypeScript client's packages (clients/typescript/package-lock.json); its node tests
#     run inside pytest (tests/test_typescript_client.py)
# Extra arguments go to pytest (e.g. scripts/test.sh -k attention); the exit code is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
command -v kubectl >/dev/null 2>&1 || missing+=(kubectl)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

npm ci --no-audit --no-fund
(cd clients/typescript && npm ci --no-audit --no-fund)

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check torch==2.13.0
python -m pip install -q --disable-pip-version-check -e ".[dev]"
# the vision tests' Grad-CAM reference, without torchvision (see the dev extra in pyproject.toml)
python -m pip install -q --disable-pip-version-check --no-deps "grad-cam==1.5.7"

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
# --durations=15 prints the slowest tests; exec hands pytest's exit code to the caller.
exec python -m pytest -q tests --durations=15 "$@"
