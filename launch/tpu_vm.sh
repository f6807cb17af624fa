#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one host or a pod): create it, put the code on every worker,
# install, run the same command on all workers. See launch/README.md.
#
#   PROJECT=my-proj ZONE=us-west4-a ACCELERATOR=v5litepod-256 NAME=mim-v5e \
#   WORKDIR=gs://my-bucket/runs/maskalign DATA_DIR=gs://my-bucket/tfds \
#     bash launch/tpu_vm.sh [--dry-run] all -- --config.batch_size=4096
#
# Steps (each can be run alone; `all` runs check, create, copy, setup, train):
#   check   compile the step ahead of time for TOPOLOGY on this machine (python -m mim_jax.aot)
#   create  the TPU VM (QUEUED=1: a queued resource, SPOT=1: spot capacity)
#   copy    REPO_URL set: git clone it on every worker; else: this checkout's HEAD (git archive)
#   setup   a venv on every worker with requirements.txt + requirements-tpu.txt
#   train   python -m mim_jax.main --config CONFIG --workdir WORKDIR --distributed on all workers
#   ssh     run the shell line after `--` on every worker (e.g. `ssh -- tail -n 3 mim_jax/train.log`)
#   delete  the TPU VM (or queued resource)
# Everything after `--` goes to mim_jax.main (train) or is the command (ssh).
# --dry-run prints the commands and runs none (gcloud need not be installed).
#
# Environment (defaults in brackets):
#   PROJECT [gcloud's default], ZONE [us-west4-a], NAME [mim-jax], ACCELERATOR [v5litepod-16],
#   RUNTIME_VERSION [from the accelerator: v2-alpha-tpuv5-lite, v2-alpha-tpuv5, v2-alpha-tpuv6e,
#   tpu-ubuntu2204-base], TOPOLOGY [from the accelerator, for `check`], CONFIG
#   [configs/maskalign_b16_clip_b16.py], WORKDIR [required for train; a gs:// path on pods],
#   DATA_DIR [optional TFDS data dir, gs:// on pods], REPO_URL, BRANCH [main], REMOTE_DIR
#   [mim_jax], QUEUED [0], SPOT [0].
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

dry_run=0
steps=()
extra=()
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    check|create|copy|setup|train|ssh|delete|all) steps+=("$1") ;;
    *) echo "tpu_vm.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
((${#steps[@]})) || { echo "tpu_vm.sh: name a step: check|create|copy|setup|train|ssh|delete|all" >&2; exit 2; }
[[ ${steps[*]} == all ]] && steps=(check create copy setup train)

ZONE=${ZONE:-us-west4-a}
NAME=${NAME:-mim-jax}
ACCELERATOR=${ACCELERATOR:-v5litepod-16}
CONFIG=${CONFIG:-configs/maskalign_b16_clip_b16.py}
BRANCH=${BRANCH:-main}
REMOTE_DIR=${REMOTE_DIR:-mim_jax}
QUEUED=${QUEUED:-0}
SPOT=${SPOT:-0}

# The software image and the AOT topology follow from the accelerator type: chips = cores on
# v4/v5p (two TensorCores per chip, "v4-32" is 16 chips), chips on v5e/v6e ("v5litepod-16").
generation=${ACCELERATOR%-*}
count=${ACCELERATOR##*-}
case $generation in
  v5litepod|v5e) default_runtime=v2-alpha-tpuv5-lite; gen=v5e; chips=$count ;;
  v6e) default_runtime=v2-alpha-tpuv6e; gen=v6e; chips=$count ;;
  v5p) default_runtime=v2-alpha-tpuv5; gen=v5p; chips=$((count / 2)) ;;
  v4) default_runtime=tpu-ubuntu2204-base; gen=v4; chips=$((count / 2)) ;;
  *) echo "tpu_vm.sh: unknown accelerator '$ACCELERATOR' (v4-N, v5p-N, v5litepod-N, v6e-N)" >&2; exit 2 ;;
esac
RUNTIME_VERSION=${RUNTIME_VERSION:-$default_runtime}

# A slice shape for `check` when TOPOLOGY is not given, as Cloud TPU builds them: chips doubled
# along the last axis first (v5e-32: 4x8, v4-32: 2x2x4), single-host slices flat (v4-8: 2x2x1).
default_topology() {
  local n=$1 dims=$2 shape=() i step=-1
  for ((i = 0; i < dims; i++)); do shape+=(1); done
  i=$((dims - 1))
  if ((n <= 4)); then i=0; step=1; fi
  while ((n > 1)); do
    shape[i]=$((shape[i] * 2)); n=$((n / 2)); i=$(((i + step + dims) % dims))
  done
  local IFS=x
  echo "$gen:${shape[*]}"
}
if [[ -z ${TOPOLOGY:-} ]]; then
  case $gen in v5e|v6e) TOPOLOGY=$(default_topology "$chips" 2) ;; *) TOPOLOGY=$(default_topology "$chips" 3) ;; esac
fi

# Prints a command the way a shell would read it back, then runs it (unless --dry-run).
run() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "+ ${out[*]}"
  ((dry_run)) || "$@"
}

gcloud_tpu=(gcloud compute tpus)
project=()
[[ -n ${PROJECT:-} ]] && project=(--project "$PROJECT")
if ((!dry_run)) && [[ " ${steps[*]} " != " check " ]] && ! command -v gcloud >/dev/null; then
  echo "tpu_vm.sh: gcloud not found: install the Google Cloud CLI (or use --dry-run)" >&2
  exit 1
fi

on_all_workers() {  # on_all_workers "shell command"
  run "${gcloud_tpu[@]}" tpu-vm ssh "$NAME" "${project[@]}" --zone "$ZONE" --worker=all \
    --command "$1"
}

# Words joined into one remote command line, each quoted for the remote shell.
quote_words() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

for step in "${steps[@]}"; do
  echo "# $step"
  case $step in
    check)
      # The compiler's memory analysis for the target slice; exits non-zero if it won't fit.
      overrides=()
      for a in "${extra[@]}"; do [[ $a == --config.* ]] && overrides+=("$a"); done
      run "${PYTHON:-python}" -m mim_jax.aot --config "$CONFIG" --topology "$TOPOLOGY" "${overrides[@]}" ;;
    create)
      spot=()
      if ((QUEUED)); then
        ((SPOT)) && spot=(--spot)
        run "${gcloud_tpu[@]}" queued-resources create "$NAME" "${project[@]}" --zone "$ZONE" \
          --node-id "$NAME" --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME_VERSION" \
          "${spot[@]}"
        echo "# wait until the queued resource is ACTIVE:"
        run "${gcloud_tpu[@]}" queued-resources describe "$NAME" "${project[@]}" --zone "$ZONE" \
          --format='value(state.state)'
      else
        ((SPOT)) && spot=(--spot)
        run "${gcloud_tpu[@]}" tpu-vm create "$NAME" "${project[@]}" --zone "$ZONE" \
          --accelerator-type "$ACCELERATOR" --version "$RUNTIME_VERSION" "${spot[@]}"
      fi ;;
    copy)
      if [[ -n ${REPO_URL:-} ]]; then
        on_all_workers "rm -rf $REMOTE_DIR && git clone --depth 1 --branch $BRANCH $REPO_URL $REMOTE_DIR"
      else
        # The committed tree only: what runs on the pod is a commit, not local edits.
        tarball=${TMPDIR:-/tmp}/mim_jax_$NAME.tar.gz
        run git -C "$root" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$tarball" HEAD
        run "${gcloud_tpu[@]}" tpu-vm scp "$tarball" "$NAME:mim_jax.tar.gz" "${project[@]}" \
          --zone "$ZONE" --worker=all
        on_all_workers "rm -rf $REMOTE_DIR && tar xzf mim_jax.tar.gz"
      fi ;;
    setup)
      on_all_workers "cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -r requirements.txt -r requirements-tpu.txt" ;;
    train)
      if [[ -z ${WORKDIR:-} ]]; then
        echo "tpu_vm.sh: set WORKDIR (a gs:// path on a pod: every host writes its checkpoint shards there)" >&2
        exit 2
      fi
      args=(--config "$CONFIG" --workdir "$WORKDIR" --distributed)
      [[ -n ${DATA_DIR:-} ]] && args+=(--config.data.data_dir="$DATA_DIR")
      # The same command on every worker: jax.distributed.initialize() finds the pod's hosts
      # itself; each host reads its own shard of the data. Output per worker goes to train.log.
      on_all_workers "cd $REMOTE_DIR && nohup .venv/bin/python -m mim_jax.main $(quote_words "${args[@]}" "${extra[@]}") > train.log 2>&1 &" ;;
    ssh)
      on_all_workers "${extra[*]}" ;;  # a remote shell line: `ssh -- 'a && b'` works
    delete)
      if ((QUEUED)); then
        run "${gcloud_tpu[@]}" queued-resources delete "$NAME" "${project[@]}" --zone "$ZONE" --force --quiet
      else
        run "${gcloud_tpu[@]}" tpu-vm delete "$NAME" "${project[@]}" --zone "$ZONE" --quiet
      fi ;;
  esac
done
