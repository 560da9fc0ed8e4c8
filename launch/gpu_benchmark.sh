#!/usr/bin/env bash
# The GPU rows of README "Performance" in one command, for a lent GPU machine (its time is
# short: one prepared run). B0 at 224 with batch 256 and B4 at 380 with batch 128, bfloat16:
# our train and eval steps (depthwise=conv, the GPU default) against timm's (AMP,
# channels_last) in the same run, each in its own process. Tables on stdout, JSON per model
# under $OUT (default runs/gpu_benchmark).
#
#   launch/gpu_benchmark.sh
#   ARCHS="b0:128" DEPTHWISE=conv,shifted STEPS=5 launch/gpu_benchmark.sh
#
# Environment: ARCHS (arch:batch pairs, default "b0:256 b4:128"), DEPTHWISE (default conv),
# STEPS/REPEATS/WARMUP (default 10/3/3), PYTHON (default python3). Python packages the
# machine lacks can travel as wheels in .whl/ at the repo root; they are installed into
# /tmp/site first. The lent H100/H200 image (jax 0.11, flax, optax, timm, torch) lacked clu
# and ml-collections: `pip download --no-deps --only-binary=:all: --python-version 3.12
# -d .whl clu==0.0.12 ml-collections==1.1.0`. The e2e benchmark also needs TensorFlow and
# TFDS to prepare data, so it is not part of this run.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
out=${OUT:-$repo/runs/gpu_benchmark}
mkdir -p "$out"
if compgen -G "$repo/.whl/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$repo"/.whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$python" -c 'import jax, torch; print("jax", jax.__version__, jax.devices(), "| torch", torch.__version__)'
for spec in ${ARCHS:-b0:256 b4:128}; do
  arch=${spec%%:*}
  batch=${spec##*:}
  "$python" -m efficientnet_jax.benchmark step --arch="$arch" --batch="$batch" --dtype=bfloat16 \
    --depthwise="${DEPTHWISE:-conv}" --vs-torch --steps="${STEPS:-10}" \
    --repeats="${REPEATS:-3}" --warmup="${WARMUP:-3}" --json="$out/step_${arch}_${batch}.json"
done
