#!/usr/bin/env bash
# Run a var_jax command on every worker of a TPU VM pod.
#
# The first use on a pod creates ~/var_jax/.venv on each worker (jax[tpu] plus this package); later uses only
# sync the code. Every worker runs the same command; var_jax.train detects the pod and calls
# jax.distributed.initialize() itself.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--dry-run] -- python -m var_jax.train ARGS...
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
usage: launch/tpu_pod.sh --tpu NAME --zone ZONE [--project PROJECT] [--remote-dir DIR] [--dry-run] -- COMMAND...
  --tpu NAME        TPU VM name (gcloud compute tpus tpu-vm)
  --zone ZONE       its zone
  --project P       GCP project (default: gcloud's configured one)
  --remote-dir DIR  where the code lives on each worker (default: var_jax)
  --dry-run         print the gcloud commands instead of running them
  COMMAND           run from DIR on every worker with the venv's python first on PATH
USAGE
  exit 2
}

tpu="" zone="" project="" remote_dir="var_jax" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="${2:-}"; shift 2 || usage ;;
    --zone) zone="${2:-}"; shift 2 || usage ;;
    --project) project="${2:-}"; shift 2 || usage ;;
    --remote-dir) remote_dir="${2:-}"; shift 2 || usage ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "tpu_pod.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[[ -n "$tpu" && -n "$zone" && $# -gt 0 ]] || usage

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gcloud_args=(compute tpus tpu-vm)
target=("$tpu" "--zone=$zone" "--worker=all")
[[ -n "$project" ]] && target+=("--project=$project")
archive="$(mktemp -u /tmp/var_jax.XXXXXX).tar.gz"
(( dry_run )) || trap 'rm -f "$archive"' EXIT

run() {
  if (( dry_run )); then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

# Ship exactly what git tracks, so every worker runs the same code as this checkout.
run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
run gcloud "${gcloud_args[@]}" scp "$archive" "${target[0]}:/tmp/var_jax.tar.gz" "${target[@]:1}"
bootstrap="mkdir -p $remote_dir && tar -xzf /tmp/var_jax.tar.gz -C $remote_dir && cd $remote_dir \
&& { test -x .venv/bin/python || { python3 -m venv .venv && .venv/bin/pip install -q -U pip \
&& .venv/bin/pip install -q 'jax[tpu]' -e .; }; }"
printf -v user_cmd '%q ' "$@"
user_cmd="${user_cmd% }"
run gcloud "${gcloud_args[@]}" ssh "${target[@]}" --command="$bootstrap && PATH=\$PWD/.venv/bin:\$PATH $user_cmd"
