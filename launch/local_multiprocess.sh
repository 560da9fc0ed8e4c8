#!/usr/bin/env bash
# One training run as N processes on this machine, on CPU, joined by JAX's distributed
# runtime on localhost: the multi-host code path without a cluster (for testing).
#
#   launch/local_multiprocess.sh NUM_PROCESSES --config=configs/demo.py --workdir=runs/mp
#
# Arguments after NUM_PROCESSES go to every `python -m efficientnet_jax.main`.
# Environment: DEVICES_PER_PROCESS (forced CPU devices per process, default 1),
# PORT (coordinator port, default a free one), PYTHON (default python3),
# LOG_DIR (logs of processes 1.., default a new temporary folder; process 0 logs here).
# If one process fails the others are stopped; SIGTERM/SIGINT reach every process, which
# save a checkpoint and exit.
set -euo pipefail

if [[ $# -lt 1 || ! $1 =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,12s/^# \{0,1\}//p' "$0" >&2
  exit 2
fi
num_processes=$1
shift
python=${PYTHON:-python3}
devices=${DEVICES_PER_PROCESS:-1}
repo=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
port=${PORT:-$("$python" -m efficientnet_jax.ports)}
log_dir=${LOG_DIR:-$(mktemp -d -t efficientnet_jax_processes.XXXXXX)}
mkdir -p "$log_dir"
export JAX_PLATFORMS=cpu
export XLA_FLAGS="--xla_force_host_platform_device_count=$devices ${XLA_FLAGS:-}"

echo "Starting $num_processes processes x $devices CPU device(s), coordinator 127.0.0.1:$port;" \
     "logs of processes 1..$((num_processes - 1)) in $log_dir" >&2
pids=()
for ((i = 0; i < num_processes; i++)); do
  args=(-m efficientnet_jax.main --coordinator_address="127.0.0.1:$port"
        --num_processes="$num_processes" --process_id="$i" "$@")
  if ((i == 0)); then
    "$python" "${args[@]}" &
  else
    "$python" "${args[@]}" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

stop_all() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap 'stop_all; wait; exit 143' TERM INT

status=0
for _ in "${pids[@]}"; do
  if ! wait -n; then
    status=1
    echo "A process failed; stopping the others (logs in $log_dir)." >&2
    stop_all
    wait || true
    break
  fi
done
exit "$status"
