#!/usr/bin/env bash
# The first measurement on a GPU, in one call of under 10 minutes on one NVIDIA GPU:
#   1. parity: one float32 train step (B/16 + CLIP-B/16, batch 8) on the GPU against the same step
#      on this machine's CPU, same parameters and batch (benchmarks/gpu_parity.py);
#   2. speed: the bf16 MaskAlign step (B/16 + CLIP-B/16) at batch $BATCH: ms/step, img/s, MFU
#      against the chip's peak from mim_jax/chips.py (benchmarks/step_speed.py);
#   3. the demo's first steps: configs/demo.py for $DEMO_STEPS steps (its teacher trained first
#      when not cached), through the real train loop and input pipeline;
#   4. XLA flag candidates (mim_jax/xla_flags.py CANDIDATES): step 2 again with each flag added to
#      XLA_FLAGS, to compare with step 2's figure (a flag goes into GPU_FLAGS only if it helps).
# Parts run in that order, each under a time limit; when the budget ($BUDGET_S, 540 s) runs
# short, the rest are skipped and summary.txt says so.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run   # prints the commands; needs no GPU
#
# Writes into $GPU_CHECK_DIR, default $OUT/gpu_check when OUT is set, else ./gpu_check: six
# files, parity.log, speed.log, demo.log, flags.log, parity.json and summary.txt (the result
# lines of every part; the demo's workdir goes to $TMPDIR). Python is $PYTHON,
# else $MIM_JAX_VENV/bin/python (default .venv), else python3; it needs requirements.txt and
# requirements-gpu.txt installed. Exit status: 0 all parts ran and parity passed, 1 otherwise,
# 2 no GPU visible to JAX (checked before anything is written).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

dry_run=0
[[ ${1:-} == --dry-run ]] && dry_run=1
venv=${MIM_JAX_VENV:-$root/.venv}
py=${PYTHON:-$venv/bin/python}
[[ -x $py ]] || py=python3
out=${GPU_CHECK_DIR:-${OUT:+$OUT/gpu_check}}
out=${out:-$root/gpu_check}
batch=${BATCH:-128}
steps=${STEPS:-10}
demo_steps=${DEMO_STEPS:-100}
budget=${BUDGET_S:-540}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}

q() { printf '%q' "$1"; }
speed="$(q "$py") benchmarks/step_speed.py --precision bfloat16 --batch $batch --steps $steps"
demo_dir=${TMPDIR:-/tmp}/gpu_check_demo  # checkpoints stay out of $out: only the figures go back
# name|time limit (s)|command; the flag candidates follow, read from mim_jax/xla_flags.py.
parts=(
  "parity|200|$(q "$py") benchmarks/gpu_parity.py --platforms gpu,cpu --batch 8 --json $(q "$out/parity.json")"
  "speed|150|$speed"
  "demo|200|$(q "$py") -m mim_jax.main --config configs/demo.py --workdir $(q "$demo_dir") --config.total_steps=$demo_steps --config.log_every=25 --config.checkpoint_every=$demo_steps --config.eval.every=0"
)
candidates=$("$py" -c 'from mim_jax.xla_flags import CANDIDATES as c; print("\n".join(f"{k} {v}" for k, v in c.items()))') ||
  { echo "error: $py cannot read mim_jax/xla_flags.py" >&2; exit 2; }
while read -r name flag; do
  parts+=("flag_$name|120|env $(q "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }$flag") $speed")
done <<< "$candidates"

if ((dry_run)); then
  for part in "${parts[@]}"; do
    IFS='|' read -r name limit cmd <<< "$part"
    echo "+ $cmd    # $name, at most ${limit}s"
  done
  exit 0
fi

# A GPU first: nothing is written without one.
if ! kind=$("$py" -c "import jax; print(jax.devices('gpu')[0].device_kind)" 2>"${TMPDIR:-/tmp}/gpu_check_probe.$$"); then
  why=$(grep -v '^[[:space:]]*$' "${TMPDIR:-/tmp}/gpu_check_probe.$$" | tail -n 1)
  rm -f "${TMPDIR:-/tmp}/gpu_check_probe.$$"
  echo "error: no GPU visible to JAX ($why); run this on a machine with an NVIDIA GPU, with" \
       "pip install -r requirements.txt -r requirements-gpu.txt (and JAX_PLATFORMS unset)" >&2
  exit 2
fi
rm -f "${TMPDIR:-/tmp}/gpu_check_probe.$$"

mkdir -p "$out"
summary=$out/summary.txt
{
  echo "gpu_check $(date -u +%Y-%m-%dT%H:%MZ): $kind; commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  "$py" -c "import jax, jaxlib; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
} > "$summary"

status=0
start=$SECONDS
rm -rf "$demo_dir"
tmp=${TMPDIR:-/tmp}/gpu_check_part.$$
for part in "${parts[@]}"; do
  IFS='|' read -r name limit cmd <<< "$part"
  left=$((budget - (SECONDS - start)))
  if ((left < 60)); then
    echo "$name: skipped, ${left}s of the ${budget}s budget left" | tee -a "$summary"
    status=1
    continue
  fi
  ((limit > left)) && limit=$left
  echo "== $name (at most ${limit}s): $cmd"
  t0=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "$cmd" > "$tmp" 2>&1
  rc=$?
  log=$out/$name.log
  [[ $name == flag_* ]] && log=$out/flags.log  # one file for all candidates (few files go back)
  { echo "== $name: $cmd"; cat "$tmp"; } >> "$log"
  echo "$name: exit $rc after $((SECONDS - t0))s" >> "$summary"
  # The result lines of each part (the parity verdicts, the step-speed lines, the demo's last
  # progress lines) go to the summary; the whole output stays in the log.
  case $name in
    parity) grep -E '^(one float32|loss|gradient|params) ' "$tmp" ;;
    demo) grep -v '^[[:space:]]*$' "$tmp" | tail -n 4 ;;
    *) grep -E '^(JAX |bfloat16 )' "$tmp" | sed "s/^/$name: /" ;;
  esac >> "$summary"
  if ((rc != 0)); then
    status=1
    tail -n 5 "$tmp" | sed "s/^/  $name| /" >> "$summary"
  fi
done
rm -f "$tmp"
echo "total $((SECONDS - start))s" >> "$summary"
cat "$summary"
exit $status
