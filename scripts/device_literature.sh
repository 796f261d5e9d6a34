#!/usr/bin/env bash
# One device call of issue 19's literature table (python -m bench literature), everything it makes under $OUT, the
# only folder that comes back from the device machine:
#   bash scripts/device_literature.sh resnet56 [--cifar PATH/cifar10.zip] [more options]
# $OUT/BENCHMARKS.md  a copy of docs/BENCHMARKS.md with the part rewritten after every row (a call cut short keeps
#                     its rows); land it here with: python -m bench literature --part resnet56 --take FILE
# $OUT/ws             the workspace (ResNet-56 / ResNet-20 only: ResNet-18 bundles are ~45 MB each), so that a part
#                     left pending finishes in a later call: ... --workspace ws --resume
# $OUT/literature-PART.log
set -u
part=${1:?which part: resnet56, resnet18 or resnet20}
shift
out=${OUT:?OUT: the folder that comes back}
cp docs/BENCHMARKS.md "$out/BENCHMARKS.md"
ws=()
if [ "$part" != resnet18 ]; then
    # the decoded-image cache (~180 MB for CIFAR-10) stays outside $OUT: a link there is not sent back
    mkdir -p "$out/ws" /tmp/slimbench-literature-cache
    ln -sfn /tmp/slimbench-literature-cache "$out/ws/cache"
    ws=(--workspace "$out/ws")
fi
"${PY:-.venv/bin/python}" -m bench literature --part "$part" --out "$out/BENCHMARKS.md" "${ws[@]}" "$@" 2>&1 \
    | tee "$out/literature-$part.log"
