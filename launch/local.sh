#!/usr/bin/env bash
# Set-up and local runs on a fresh clone (only Python 3.11 and pip needed):
#   bash launch/local.sh demo [--workdir runs/demo]   # installs, then runs the demo
#   bash launch/local.sh test [pytest args]           # installs, then runs the test suite
#   bash launch/local.sh train --config ... --workdir ...   # python -m mim_jax.main
#   bash launch/local.sh setup                        # installs only
# The virtual environment is .venv (MIM_JAX_VENV overrides). `test` installs requirements-test.txt
# (core + torch + pytest), everything else the core requirements.txt only (no torch); each set is
# installed again only when one of its files changes. MIM_JAX_EXTRAS adds optional sets on top,
# e.g. MIM_JAX_EXTRAS=tpu (libtpu: TPU VMs, compile-only TPU topologies) or MIM_JAX_EXTRAS=gpu
# (jax's CUDA wheels); each name is a requirements-<name>.txt file.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${MIM_JAX_VENV:-$root/.venv}
python=${PYTHON:-python3}

if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv"
fi
cmd=${1:-}
shift || true
# The requirement set of this command and the files it reads (their hashes make the stamp).
if [[ $cmd == test ]]; then
  reqs=requirements-test.txt; files="requirements.txt requirements-torch.txt requirements-test.txt"
else
  reqs=requirements.txt; files=requirements.txt
fi
extras=()
extras_list=${MIM_JAX_EXTRAS:-}
for name in ${extras_list//,/ }; do
  if [[ ! -f requirements-$name.txt ]]; then
    echo "error: MIM_JAX_EXTRAS names '$name' but requirements-$name.txt does not exist;" \
         "use one of: $(ls requirements-*.txt | sed 's/requirements-//; s/.txt//' | tr '\n' ' ')" >&2
    exit 2
  fi
  extras+=(-r "requirements-$name.txt")
  files="$files requirements-$name.txt"
done
stamp=$venv/.${reqs%.txt}.sha256
want=$(cat $files | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -r "$reqs" "${extras[@]}"
  echo "$want" > "$stamp"
fi

# jemalloc, when the machine has it, removes page-fault stalls from large XLA allocations.
for lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2; do
  if [[ -f $lib ]]; then
    export LD_PRELOAD=${LD_PRELOAD:+$LD_PRELOAD:}$lib
    export MALLOC_CONF=${MALLOC_CONF:-dirty_decay_ms:-1,muzzy_decay_ms:-1}
    break
  fi
done
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}

case $cmd in
  setup) ;;
  test) exec "$venv/bin/python" -m pytest "$@" ;;
  demo) exec "$venv/bin/python" -m mim_jax.demo "$@" ;;
  train) exec "$venv/bin/python" -m mim_jax.main "$@" ;;
  *) echo "usage: bash launch/local.sh {setup|test|demo|train} [args]" >&2; exit 2 ;;
esac
