#!/usr/bin/env bash
# Run HERE, in the checkout that makes the lent-GPU call, before it: `bash scripts/gpu_prepare.sh [CIFAR10_ZIP]`.
#   1. downloads into .whl/ the wheels of the packages the GPU commands import that the device lacks
#      (scripts/rehearse/device_packages.py CARRIED; pip's --no-deps: each one's own needs are checked below),
#   2. copies CIFAR-10 (default ../shared/datasets/cifar10.zip) to .gpu/cifar10.zip and the commit to .gpu/COMMIT,
#   3. prints the bytes that will travel (tracked + untracked-not-ignored + shared/ + .gpu + .whl) against the
#      call's 64 MiB and exits 1 if over.
# `--check-only` does step 3 alone (no network). GPU_PREPARE_EXTRA_BYTES adds bytes to the count (a what-if).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
LIMIT=$((64 * 1024 * 1024))
CHECK_ONLY=0
if [ "${1:-}" = "--check-only" ]; then CHECK_ONLY=1; shift; fi
CIFAR=${1:-$ROOT/../shared/datasets/cifar10.zip}

if [ "$CHECK_ONLY" = 0 ]; then
  PY=${PYTHON:-python3}
  mapfile -t CARRIED < <("$PY" scripts/rehearse/device_packages.py --carried)
  mkdir -p .whl
  for req in "${CARRIED[@]}"; do
    name=${req%%==*}
    norm=$(tr 'A-Z-' 'a-z_' <<<"$name")
    for old in .whl/*.whl; do   # one version of each: two stop the device's whole install
      [ -e "$old" ] || continue
      base=$(basename "$old"); dist=$(tr 'A-Z-' 'a-z_' <<<"${base%%-*}")
      [ "$dist" = "$norm" ] && [[ "$base" != "${base%%-*}-${req##*==}-"* ]] && { echo "removing $old (not $req)"; rm -f "$old"; }
    done
    # The device README's command: Python 3.12, x86-64 manylinux, binaries only, no dependencies.
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$req" \
      || { echo "error: pip could not download $req" >&2; exit 1; }
  done
  # Each wheel's own needs: on the device already (KINDS.md), or carried too; never one we know it lacks.
  "$PY" - <<'EOF' || exit 1
import re, sys, zipfile
from pathlib import Path
sys.path.insert(0, "scripts/rehearse")
from device_packages import ABSENT, CARRIED, UNUSED_NEEDS
carried = {re.split(r"[=<>!~ ]", r)[0].lower().replace("_", "-") for r in CARRIED.values()}
absent = {d.lower() for d in ABSENT.values()} - carried - UNUSED_NEEDS
bad = []
for whl in sorted(Path(".whl").glob("*.whl")):
    meta = next(n for n in zipfile.ZipFile(whl).namelist() if n.endswith(".dist-info/METADATA"))
    needs = [line.split(":", 1)[1].strip() for line in zipfile.ZipFile(whl).read(meta).decode().splitlines()
             if line.startswith("Requires-Dist:") and "extra ==" not in line]
    names = [re.split(r"[\s;<>=!~\[(]", n)[0].lower().replace("_", "-") for n in needs]
    bad += [f"{whl.name} needs {n}" for n in names if n in absent]
    there = [n for n in names if n not in carried and n not in UNUSED_NEEDS]
    unused = [n for n in names if n in UNUSED_NEEDS]
    print(f"{whl.name}: needs {', '.join(needs) or 'nothing'} (on the device: {', '.join(there) or '-'}"
          + (f"; not carried, unused on these paths: {', '.join(unused)})" if unused else ")"))
if bad:
    sys.exit("error: a carried wheel needs a package the device lacks; add it to CARRIED: " + "; ".join(bad))
EOF
  [ -f "$CIFAR" ] || { echo "error: CIFAR-10 zip not found: $CIFAR" >&2; exit 2; }
  mkdir -p .gpu
  cmp -s "$CIFAR" .gpu/cifar10.zip || { rm -f .gpu/cifar10.zip && cp "$CIFAR" .gpu/cifar10.zip; }
  rev=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
  [ -n "$(git status --porcelain --untracked-files=no -- engine bench 2>/dev/null)" ] \
    && rev="$rev + uncommitted changes to engine/ or bench/"
  echo "$rev" > .gpu/COMMIT
fi

# What the call sends: tracked and untracked-not-ignored files (as they are on disk), shared/ if there, and carry.
bytes_of() { xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
tree=$(git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
         [ -f "$f" ] && [ ! -L "$f" ] && printf '%s\0' "$f"; done | bytes_of)
extra=0
for d in shared .gpu .whl; do
  [ -d "$d" ] && extra=$((extra + $(find "$d" -type f -print0 | bytes_of)))
done
fake=${GPU_PREPARE_EXTRA_BYTES:-0}
total=$((tree + extra + fake))
mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }
echo "travels: $total bytes ($(mib "$total")) of $LIMIT ($(mib "$LIMIT")): working tree $(mib "$tree"), shared/.gpu/.whl $(mib "$extra")$([ "$fake" != 0 ] && echo ", extra $(mib "$fake")")"
for d in .gpu .whl; do [ -d "$d" ] && du -b --max-depth=0 "$d" 2>/dev/null | awk '{printf "  %s %d bytes\n", $2, $1}'; done
if [ "$total" -gt "$LIMIT" ]; then
  echo "error: over the call's 64 MiB by $((total - LIMIT)) bytes: carry less, or ignore what need not travel" >&2
  exit 1
fi
echo "headroom: $((LIMIT - total)) bytes ($(mib $((LIMIT - total))))"
