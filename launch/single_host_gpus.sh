#!/usr/bin/env bash
# Train on the GPUs of this machine: one process drives all of them (JAX's
# single-controller model); the global batch (config.train.batch_size) is split over them
# and BatchNorm sees all of it.
#
#   launch/single_host_gpus.sh --config=configs/b0_cars.py --workdir=runs/b0
#   GPUS=0,1 launch/single_host_gpus.sh --config=configs/cars.py:b5 --workdir=runs/b5
#
# Arguments go to `python -m efficientnet_jax.main`. Environment: GPUS (CUDA device ids,
# default all), PYTHON (default python3), MEM_FRACTION (share of each GPU's memory JAX
# preallocates; JAX's default 0.75). Needs the CUDA build of jax: pip install -e '.[cuda]'.
set -euo pipefail

if [[ $# -eq 0 ]]; then
  sed -n '2,10s/^# \{0,1\}//p' "$0" >&2
  exit 2
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n ${GPUS:-} ]]; then
  export CUDA_VISIBLE_DEVICES=$GPUS
fi
if [[ -n ${MEM_FRACTION:-} ]]; then
  export XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION
fi
exec "${PYTHON:-python3}" -m efficientnet_jax.main "$@"
