#!/usr/bin/env bash
# Run NPROC processes of a var_jax COMMAND on this machine, as a multi-host job would: each process gets
# its own fake CPU devices and the coordinator flags, and they meet through jax.distributed on 127.0.0.1
# (gloo collectives). For tests and for trying multi-host code paths without a cluster. Like the other
# launchers (tpu_pod.sh, slurm.sbatch) it takes the command after `--`.
#
#   launch/local.sh [--devices N] [--port P] [--dry-run] NPROC -- python -m var_jax.train ARGS...
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
usage: launch/local.sh [--devices N] [--port P] [--dry-run] NPROC -- COMMAND...
  NPROC        number of processes (>= 1)
  --devices N  fake CPU devices per process (default 2)
  --port P     coordinator port on 127.0.0.1 (default 12355)
  --dry-run    print the commands instead of running them
  COMMAND      a var_jax command that takes --coordinator_address, --num_processes and --process_id,
               e.g. `python -m var_jax.train --config=... --workdir=...`
  The job exits with the first failing process's exit status (the others are stopped).
USAGE
  exit 2
}

devices=2 port=12355 dry_run=0 nproc=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --devices) devices="${2:-}"; shift 2 || usage ;;
    --port) port="${2:-}"; shift 2 || usage ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    -*) echo "local.sh: unknown option '$1'" >&2; usage ;;
    *) [[ -z "$nproc" ]] || { echo "local.sh: unexpected argument '$1' (missing --?)" >&2; usage; }
       nproc="$1"; shift ;;
  esac
done
is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_count "$nproc" || { echo "local.sh: NPROC must be a positive integer, got '${nproc}'" >&2; usage; }
is_count "$devices" || { echo "local.sh: --devices must be a positive integer, got '$devices'" >&2; usage; }
is_count "$port" || { echo "local.sh: --port must be a positive integer, got '$port'" >&2; usage; }
[[ $# -gt 0 ]] || { echo "local.sh: no command after --" >&2; usage; }

commands=()
for ((i = 0; i < nproc; i++)); do
  printf -v cmd '%q ' env JAX_PLATFORMS=cpu \
    "XLA_FLAGS=--xla_force_host_platform_device_count=$devices" \
    "$@" --coordinator_address="127.0.0.1:$port" --num_processes="$nproc" --process_id="$i"
  commands+=("${cmd% }")
done

if (( dry_run )); then
  printf '%s\n' "${commands[@]}"
  exit 0
fi

pids=()
stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 143' TERM
trap 'stop_all; exit 130' INT
for cmd in "${commands[@]}"; do
  bash -c "exec $cmd" &
  pids+=("$!")
done

# The first process to fail takes the others down (they would wait for it forever), and its status is the job's.
status=0
for ((n = 0; n < nproc; n++)); do
  rc=0
  wait -n || rc=$?
  if (( rc != 0 && status == 0 )); then
    status=$rc
    stop_all
  fi
done
exit "$status"
