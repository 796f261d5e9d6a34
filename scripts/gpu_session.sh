#!/usr/bin/env bash
# One lent GPU call, with nothing to debug there: `bash scripts/gpu_session.sh PART` is the device call's command
# (after scripts/gpu_prepare.sh here; carry [".gpu", ".whl"]). It installs the carried wheels, prints the GPU's
# facts, runs PART's command under a time budget with its output in $OUT/PART.log, and copies the results into
# $OUT (docs/BENCHMARKS.md, the runs' records), also when the command failed or ran out of time.
#
# `bash scripts/gpu_session.sh --rehearse PART` runs the same PART here, on the CPU, in .venv: tiny settings,
# every package the device lacks blocked at import (scripts/rehearse/device_packages.py), the report written to a
# scratch copy of docs/BENCHMARKS.md in $OUT (default /tmp/slimbench-rehearse-PART), never the real one.
set -uo pipefail

# PART | its command on the GPU machine (sized for one ~9-minute call) | what a rehearsal appends (tiny settings;
# the later flag wins). One row per part; a part's command reads CIFAR-10 from .gpu/ (scripts/gpu_prepare.sh).
PARTS=(
  "methods|python3 -m bench gpu --cifar .gpu/cifar10.zip --base-epochs 12 --finetune-epochs 2 --student-epochs 8|--limit 200 --test-limit 100 --base-epochs 1 --finetune-epochs 1 --student-epochs 1"
  "bases|python3 -m bench gpu-bases --cifar .gpu/cifar10.zip|--limit 200 --test-limit 100 --base-epochs 1"
  # issue 19's literature table, one net a call (its --rehearse: --device cpu --tiny); 8.2 min of the 520-s budget
  # leaves its process start and the copy-back inside the call
  "literature-resnet56|python3 -m bench literature --part resnet56 --cifar .gpu/cifar10.zip --minutes 8.2|"
  "literature-resnet18|python3 -m bench literature --part resnet18 --cifar .gpu/cifar10.zip --minutes 8.2|"
  "literature-resnet20|python3 -m bench literature --part resnet20 --cifar .gpu/cifar10.zip --minutes 8.2|"
  # issue 21's GPU targets (its --rehearse: bench.autocompress_gpu.REHEARSAL)
  "autocompress|python3 -m bench autocompress --gpu --cifar .gpu/cifar10.zip --minutes 8|"
)

usage() {
  echo "usage: bash scripts/gpu_session.sh [--rehearse] PART   (PART: ${PARTS[*]%%|*})" >&2
  exit 2
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
REHEARSE=0
if [ "${1:-}" = "--rehearse" ]; then REHEARSE=1; shift; fi
[ $# -eq 1 ] || usage
PART=$1
ROW=""
for r in "${PARTS[@]}"; do [ "${r%%|*}" = "$PART" ] && ROW=$r; done
[ -n "$ROW" ] || { echo "error: unknown PART '$PART'" >&2; usage; }
CMD=$(cut -d'|' -f2 <<<"$ROW")
TINY=$(cut -d'|' -f3 <<<"$ROW")
export PYTHONUNBUFFERED=1

if [ "$REHEARSE" = 1 ]; then
  OUT=${OUT:-/tmp/slimbench-rehearse-$PART}
  mkdir -p "$OUT"
  PY=${PYTHON:-$ROOT/.venv/bin/python}
  SMALL=${REHEARSE_CIFAR:-$ROOT/../shared/datasets/cifar10-small.zip}
  [ -f "$SMALL" ] || { echo "error: rehearsal data not found: $SMALL (set REHEARSE_CIFAR)" >&2; exit 2; }
  # A private temporary folder (the wheels, the bench's stores: hundreds of MB), removed at the end.
  RTMP=$(mktemp -d /tmp/slimbench-rehearse.XXXXXX)
  trap 'rm -rf "$RTMP"' EXIT
  export TMPDIR=$RTMP/tmp
  mkdir -p "$TMPDIR"
  SITE=""
  if compgen -G ".whl/*.whl" >/dev/null; then   # the carried wheels, installed as the device installs them
    SITE=$RTMP/site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || { echo "error: the carried wheels do not install" >&2; exit 1; }
  else
    echo "note: no .whl/ (scripts/gpu_prepare.sh fetches it): the carried packages come from .venv" >&2
  fi
  # scripts/rehearse first: its sitecustomize blocks the device-absent packages in this and every child process.
  export PYTHONPATH="$ROOT/scripts/rehearse${SITE:+:$SITE}:$ROOT"
  # REHEARSE_ARGS: more flags still, shell-quoted (a test's shorter rehearsal: --only '...' --skip efficiency).
  eval "EXTRA=(${REHEARSE_ARGS:-})"
  read -ra RUN <<<"$PY ${CMD#python3 } --rehearse --doc $OUT/BENCHMARKS.md --cifar $SMALL $TINY"
  RUN+=("${EXTRA[@]}")
  BUDGET=${GPU_PART_BUDGET_S:-1800}   # the whole methods rehearsal took 875 s on 2 shared cores
  echo "== REHEARSAL of '$PART' on the CPU: ${RUN[*]}"
else
  : "${OUT:?OUT is unset: this runs as the command of a lent GPU call (or pass --rehearse)}"
  PY=python3
  # The wheels the device lacks (scripts/gpu_prepare.sh), installed as the device README says.
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      || { echo "error: the carried wheels do not install" >&2; exit 1; }
  else
    echo "error: no .whl/*.whl here: run scripts/gpu_prepare.sh and carry .whl" >&2; exit 1
  fi
  [ -f .gpu/cifar10.zip ] || { echo "error: no .gpu/cifar10.zip: run scripts/gpu_prepare.sh and carry .gpu" >&2; exit 1; }
  export PYTHONPATH="/tmp/site:$ROOT"       # children (`python -m engine run`, DDP ranks) find the engine too
  [ -f .gpu/COMMIT ] && export SLIMBENCH_COMMIT="$(cat .gpu/COMMIT)"   # no .git travels: the report's commit
  read -ra RUN <<<"$CMD"
  # The call's timeout_s (~560) kills everything, the copy below included: the part stops first.
  BUDGET=${GPU_PART_BUDGET_S:-520}
  echo "== GPU facts"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm,power.limit --format=csv || true
fi

# Facts, and every carried or device-side import the part needs, checked in seconds before minutes are spent.
"$PY" - <<'EOF' 2>&1 | tee "$OUT/facts.txt"
import importlib, os, platform, sys
import torch
print(f"python {platform.python_version()} at {sys.executable}; torch {torch.__version__}; cuda available "
      f"{torch.cuda.is_available()}; {os.cpu_count()} CPUs; PYTHONPATH={os.environ.get('PYTHONPATH')}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"{p.name}: {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, capability {p.major}.{p.minor}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, cuDNN {torch.backends.cudnn.version()}, CUDA {torch.version.cuda}")
sys.path.insert(0, "scripts/rehearse")
from device_packages import CARRIED
for name in (*CARRIED, "torchvision", "onnx", "onnxruntime", "onnxscript", "pandas", "sklearn", "psutil",
             "cloudpickle", "bench.__main__", "engine.methods"):
    m = importlib.import_module(name)
    print(f"  import {name}: {getattr(m, '__version__', '')} {getattr(m, '__file__', '')}")
import engine.methods
print("  methods registered:", len(engine.methods.load_all()))
EOF
[ "${PIPESTATUS[0]}" = 0 ] || { echo "error: the preflight imports failed (above): nothing was run" >&2; exit 1; }

echo "== $PART: ${RUN[*]}   (budget ${BUDGET} s)"
START=$(date +%s)
timeout -k 20 "$BUDGET" "${RUN[@]}" 2>&1 | tee "$OUT/$PART.log"
RC=${PIPESTATUS[0]}
echo "== $PART exited $RC after $(( $(date +%s) - START )) s$([ "$RC" = 124 ] && echo ": stopped at its ${BUDGET}-s budget (finished rows are in the report)")"

# What comes back: at most 8 files of 16 MiB. Already there: PART.log, facts.txt (and the rehearsal's BENCHMARKS.md).
if [ "$REHEARSE" = 0 ]; then
  cp docs/BENCHMARKS.md "$OUT/BENCHMARKS.md"
fi
# The runs' records (their JSON and logs, no weights) from the stores the bench command made under /tmp.
find "${TMPDIR:-/tmp}" -maxdepth 1 -newermt "@$START" -name 'slimbench-*' -type d -print0 2>/dev/null \
  | xargs -0 -r -I{} find {} -type f \( -name '*.json' -o -name log \) -size -4M -print0 \
  | tar --null -czf "$OUT/records.tar.gz" --files-from=- 2>/dev/null
[ "$(stat -c %s "$OUT/records.tar.gz" 2>/dev/null || echo 0)" -lt $((16 * 1024 * 1024)) ] || rm -f "$OUT/records.tar.gz"
ls -l "$OUT"
exit "$RC"
