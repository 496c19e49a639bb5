#!/usr/bin/env bash
# The one prepared GPU check, for a session lent a GPU machine (one H200 here: 15 minutes of
# device time in all, machine start included, at most 10 minutes per command, no package
# registry there, at most 8 files back). It gets one try, so it stops at the first problem
# with a clear message, and every step has a time budget; the whole check takes about 6
# minutes on an H200 and never more than TOTAL_S (540 s on cuda) before it packs up.
#
# Here, once:      . .venv/bin/activate && bash scripts/gpu_prepare.sh     # writes .gpu_wheels/
# There (device tool `run`, carry [".gpu_wheels"], timeout_s 600):  bash scripts/gpu_check.sh
# Dry run on CPU:  DEVICE=cpu OUT=/tmp/x bash scripts/gpu_check.sh  (tiny sizes; the test suite runs it
#                  with BUDGET_SCALE=8 and a long TOTAL_S, so a busy machine slows it but cannot fail it)
#
# Steps (budget in s on cuda; each is also cut to the time left):
#   facts      30  nvidia-smi (name, memory, driver, compute_mode, mig.mode.current), torch, cores;
#                  an exclusive-process GPU admits one process, so trials cannot share it:
#                  the k < 1 parts are skipped and the log says so
#   install   150  the carried wheels (hydra-core, omegaconf, antlr4, simpy) with
#                  `pip install --no-index --no-deps`, then nasalloc editable (--no-build-isolation,
#                  the image's setuptools); if that fails, all of them plus nasalloc's own wheel
#                  into a --target folder on PYTHONPATH. The image's torch is never touched (checked).
#   imports    60  hydra, simpy and nasalloc import from where they should. Every command runs
#                  in a folder outside the checkout with PYTHONSAFEPATH=1, so the checkout's
#                  nasalloc/ folder cannot shadow the installed package, in the workers either.
#   calibrate 200  the synthetic GPU trainer at k = 1 and with 2 and 4 trials sharing the GPU
#   recommend  60  one GPU, k = 1/4, 1/2, 1
#   run x3     90  the search for real at k = 1/4, 1/2, 1 (ASHA, 16 trials, up to 9 epochs)
#   run [1/2,1] 90 per-rung allocation: trials pause at the first rung, checkpoint on the GPU and
#                  resume on the whole GPU (weights_only load, optimizer state onto CUDA)
#   validate   60  the four runs against the profile
# After each run: summary.json must say failed == 0 (and the per-rung run must have resumed a
# trial from a checkpoint), else the check stops, printing the failed trial's log; checkpoints
# are deleted (hundreds of MB per trial). Everything else (logs, traces, summaries, profiles,
# validation, plots, this script's whole output) comes back as ONE archive:
# $OUT/gpu_check.tar.gz. Exit status: 0 passed, 1 a step failed, 2 bad usage.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
WHEELS=${WHEELS:-$ROOT/.gpu_wheels}
case "$DEVICE" in
  cuda) INSTALL=${INSTALL:-1}; TOTAL_S=${TOTAL_S:-540} ;;
  cpu) INSTALL=${INSTALL:-0}; TOTAL_S=${TOTAL_S:-220} ;;
  *) echo "gpu_check: DEVICE=$DEVICE: allowed: cuda, cpu" >&2; exit 2 ;;
esac
BUDGET_SCALE=${BUDGET_SCALE:-1}  # every step's budget times this (a whole number >= 1)
case "$BUDGET_SCALE" in
  ''|*[!0-9]*|0) echo "gpu_check: BUDGET_SCALE=$BUDGET_SCALE: allowed: a whole number >= 1" >&2; exit 2 ;;
esac
OUT=${OUT:-$ROOT/outputs/gpu_check}
if [ "$INSTALL" = 1 ] && ! ls "$WHEELS"/hydra_core-*.whl >/dev/null 2>&1; then
  echo "gpu_check: no wheels in $WHEELS: run scripts/gpu_prepare.sh on a machine with a registry and carry .gpu_wheels" >&2
  exit 2
fi
mkdir -p "$OUT" || { echo "gpu_check: OUT=$OUT: cannot create it" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/nasalloc-gpu-check.XXXXXX")
SITE=$WORK.site  # the fallback install folder, outside what is packed
LOG=$WORK/gpu_check.log
ARCHIVE=$OUT/gpu_check.tar.gz
PACK_RESERVE_S=20
START=$SECONDS
export PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg COLUMNS=${COLUMNS:-150}
cd "$WORK" || exit 2

say() { printf '[%s +%ds] %s\n' "$(date +%T)" $((SECONDS - START)) "$*" | tee -a "$LOG"; }
fail() { say "GPU CHECK FAILED: $*"; exit 1; }

pack() {
  local rc=$?
  find "$WORK" -name checkpoints -type d -prune -exec rm -rf {} + 2>/dev/null
  [ "$rc" = 0 ] && say "GPU CHECK PASSED ($DEVICE) in $((SECONDS - START)) s"
  tar czf "$ARCHIVE" --exclude='*.pt' -C "$WORK" . && say "archive: $ARCHIVE ($(du -h "$ARCHIVE" | cut -f1))"
  rm -rf "$WORK" "$SITE"
  exit "$rc"
}
trap pack EXIT
trap 'exit 143' TERM INT  # killed from outside: still pack what there is

# run_step NAME BUDGET_S CMD...: run CMD with stderr into the log, within its budget and the
# time left; -> CMD's exit status (124 after the budget).
run_step() {
  local name=$1 budget=$(($2 * BUDGET_SCALE)) left rc
  shift 2
  left=$((TOTAL_S - (SECONDS - START) - PACK_RESERVE_S))
  if [ "$left" -lt 10 ]; then fail "no time left for step '$name' (the whole check may take ${TOTAL_S} s)"; fi
  [ "$budget" -gt "$left" ] && budget=$left
  say "== $name (budget ${budget} s)"
  echo "\$ $*" >>"$LOG"
  timeout -k 10 "$budget" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then say "$name: ran past its ${budget} s budget"; return 124; fi
  return "$rc"
}
step() {
  local name=$1 budget=$(($2 * BUDGET_SCALE)) rc
  run_step "$@"
  rc=$?
  [ "$rc" = 124 ] && fail "step '$name' ran past its ${budget} s budget (its output is above and in gpu_check.log)"
  [ "$rc" != 0 ] && fail "step '$name' exited with status $rc (its output is above and in gpu_check.log)"
  say "$name: done"
}

# check_run DIR NEED_RESUME: the run in DIR passed (summary.json failed == 0, not interrupted;
# with NEED_RESUME=1 also a trial resumed from a checkpoint); its checkpoints are deleted.
check_run() {
  local dir=$1 need_resume=$2 rc
  rm -rf "$dir/checkpoints"
  "$PY" - "$dir" "$need_resume" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path

run, need_resume = Path(sys.argv[1]), sys.argv[2] == "1"
try:
    s = json.loads((run / "summary.json").read_text())
    events = [json.loads(line) for line in (run / "trace.jsonl").read_text().splitlines() if line.strip()]
except (OSError, ValueError) as exc:
    sys.exit(f"{run.name}: no readable summary.json/trace.jsonl ({exc})")
resumed = [e for e in events if e["event"] == "resume" and (e.get("epoch") or 0) > 0]
g = lambda key: f"{s[key]:.4g}" if isinstance(s.get(key), float) else s.get(key)  # noqa: E731
print(f"{run.name}: trials {s['trials']}, failed {s['failed']}, epochs {g('epochs_trained')}, "
      f"makespan {g('makespan_s')} s, best {g('best_metric')}, utilization {g('gpu_utilization')}, "
      f"resumed from a checkpoint {len(resumed)}, worker start-up {g('worker_startup_s')} s")
fails = [e for e in events if e["event"] == "fail"]  # failed jobs, retried or not
for e in fails[:5]:
    print(f"  trial {e['trial']} failed at epoch {e.get('epoch')}: {e.get('info')}")
if fails:
    log = run / "logs" / f"trial_{fails[0]['trial']:04d}.log"
    if log.is_file():
        print(f"--- last lines of {log.relative_to(run.parent)}:")
        print("\n".join(log.read_text(errors="replace").splitlines()[-25:]))
if s["failed"] != 0:
    sys.exit(f"{run.name}: failed == {s['failed']} in summary.json")
if s.get("interrupted"):
    sys.exit(f"{run.name}: the run was interrupted")
if s["trials"] == 0:
    sys.exit(f"{run.name}: no trial ran")
if need_resume and not resumed:
    sys.exit(f"{run.name}: no trial resumed from a checkpoint, so pause/checkpoint/resume did not run")
EOF
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || fail "the run in $(basename "$dir") did not pass (see above)"
}

# ---- facts ---------------------------------------------------------------------------------
SHARE=1
say "nasalloc GPU check: DEVICE=$DEVICE, checkout $ROOT ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git')), work $WORK"
if [ "$DEVICE" = cuda ]; then
  command -v nvidia-smi >/dev/null || fail "nvidia-smi is not on the PATH: no NVIDIA driver here"
  step nvidia-smi 30 nvidia-smi
  gpu=$(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode,mig.mode.current \
        --format=csv,noheader 2>&1 | head -1)
  say "GPU 0: $gpu (name, memory, driver, compute_mode, mig.mode.current)"
  mode=$(echo "$gpu" | awk -F', ' '{print $4}')
  mig=$(echo "$gpu" | awk -F', ' '{print $5}')
  case "$mode" in
    Default) ;;
    Exclusive_Process|Exclusive_Thread)
      SHARE=0
      say "NOTE: compute_mode=$mode: the GPU admits one process at a time, so trials cannot share it" \
          "(k = 1/2, 1/4 need one worker process per trial). Skipping the sharing calibration, the k < 1" \
          "runs and the per-rung run; only k = 1 is checked. (The GPU's settings are left as they are.)" ;;
    Prohibited) fail "compute_mode=Prohibited: no process may use this GPU" ;;
    *) say "NOTE: compute_mode '$mode' not recognised; going on as if Default" ;;
  esac
  [ "$mig" = Enabled ] && say "NOTE: MIG is enabled: torch sees a MIG instance, not the whole GPU; timings are the instance's"
fi
step python-facts 60 "$PY" -c "
import os, platform, sys, torch
print('python', platform.python_version(), sys.executable)
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
print('cores', os.cpu_count(), 'usable', len(os.sched_getaffinity(0)), 'CUDA_VISIBLE_DEVICES', os.environ.get('CUDA_VISIBLE_DEVICES'))
if '$DEVICE' == 'cuda':
    if not torch.cuda.is_available():
        sys.exit('torch sees no CUDA device')
    p = torch.cuda.get_device_properties(0)
    print('device', p.name, round(p.total_memory / 2**30, 1), 'GiB', p.multi_processor_count, 'SMs')
for d in ('setuptools', 'pip', 'wheel'):
    try:
        print(d, __import__('importlib.metadata').metadata.version(d))
    except Exception as exc:
        print(d, 'missing', exc)
"
TORCH_BEFORE=$("$PY" -c "import torch; print(torch.__version__, torch.__file__)")

# ---- install ---------------------------------------------------------------------------------
if [ "$INSTALL" = 1 ]; then
  DEPS=("$WHEELS"/hydra_core-*.whl "$WHEELS"/omegaconf-*.whl "$WHEELS"/antlr4_python3_runtime-*.whl "$WHEELS"/simpy-*.whl)
  if run_step install-wheels 60 "$PY" -m pip install --no-index --no-deps --no-cache-dir "${DEPS[@]}" &&
     run_step install-editable 90 "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir -e "$ROOT"; then
    say "installed: the carried wheels and nasalloc (editable) into $PY's environment"
  else
    say "the install into $PY's environment failed (above): installing the carried wheels and nasalloc's wheel into $SITE"
    step install-target 60 "$PY" -m pip install --no-index --no-deps --no-cache-dir --target "$SITE" "${DEPS[@]}" \
      "$WHEELS"/nasalloc-*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # the same line is in gpu_prepare.sh
    here=$(cd "$ROOT" && find nasalloc sim execute calibration validate conf pyproject.toml -type f \
      \( -name '*.py' -o -name '*.yaml' -o -name '*.toml' \) | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
    [ "$here" = "$(cat "$WHEELS/nasalloc-sources.sha" 2>/dev/null)" ] ||
      say "WARNING: nasalloc's carried wheel was built from other sources than this checkout: this check tests" \
          "those (run scripts/gpu_prepare.sh again after changing code)"
  fi
fi
step imports 60 "$PY" -c "
import sys, torch, hydra, omegaconf, simpy
import nasalloc, nasalloc.sim, nasalloc.execute.worker, nasalloc.conf
print('nasalloc', nasalloc.__file__, '| nasalloc.sim', nasalloc.sim.__file__)
print('hydra', hydra.__version__, '| omegaconf', omegaconf.__version__, '| simpy', simpy.__version__)
now = f'{torch.__version__} {torch.__file__}'
if now != '$TORCH_BEFORE':
    sys.exit(f'torch changed during the install: $TORCH_BEFORE -> {now}')
if nasalloc.sim.__file__ is None or not hasattr(nasalloc.execute.worker, 'warm_up_cuda'):
    sys.exit('nasalloc imported from the wrong place')
"

# ---- sizes -----------------------------------------------------------------------------------
if [ "$DEVICE" = cuda ]; then
  # big enough that one trial keeps the H200 busy (fp32 MLP, ~1-3 ms per step, ~100 steps per epoch)
  PARAMS=(n_samples=65536 dim=1024 width=4096 batch_size=512 scaling=strong seed=0)
  DEVICES=(devices=cuda 'devices.ids=[0]')
  CALIB=(calibration.time_limit_s=10 calibration.configs=4)
  N_TRIALS=16
  BUDGET_CAL=200 BUDGET_RUN=90 SEEDS=5
else
  # one thread per rank: on a busy shared machine spinning OpenMP threads stall each other
  # (a tiny k=1 epoch took 3 s instead of 0.05 s at load 3.7 on 2 cores)
  PARAMS=(n_samples=2048 dim=32 width=64 batch_size=64 scaling=strong seed=0)
  DEVICES=(devices=cpu devices.count=1 devices.threads_per_rank=1)
  CALIB=(calibration.cpu_slots=1 calibration.threads_per_rank=1 calibration.time_limit_s=1 calibration.configs=2 calibration.config_time_limit_s=0.3
         calibration.rounds=2 calibration.startup_jobs=1 calibration.checkpoints=1 calibration.pilot_steps=10
         calibration.bootstrap=20)
  N_TRIALS=8
  BUDGET_CAL=60 BUDGET_RUN=50 SEEDS=2
fi
SEARCH=(scheduler=asha scheduler.n_trials=$N_TRIALS scheduler.max_epochs=9 seed=0)
BATCH=$(printf '%s\n' "${PARAMS[@]}" | sed -n 's/^batch_size=//p')
CAL=() RUN=()
for p in "${PARAMS[@]}"; do CAL+=("++train.config.$p"); RUN+=("++train.params.$p"); done
if [ "$SHARE" = 1 ]; then
  SHARES='[2,4]' ALLOCATIONS='["1/4","1/2",1]' KS=(1/4 1/2 1)
else
  SHARES='[]' ALLOCATIONS='[1]' KS=(1)
fi

# ---- calibrate -> recommend -> run -> validate -----------------------------------------------
step calibrate "$BUDGET_CAL" "$PY" -m nasalloc calibrate train.entrypoint=nasalloc.execute.trainers.synthetic:train \
  "${CAL[@]}" train.batch_per_device="$BATCH" calibration.device="$DEVICE" 'calibration.gpus_per_trial=[1]' \
  "calibration.share=$SHARES" "${CALIB[@]}" name="synthetic_$DEVICE" out_dir="$WORK/calibrate"
PROFILE=$WORK/calibrate/profile.yaml
[ -f "$PROFILE" ] || fail "calibrate wrote no profile.yaml"

step recommend 60 "$PY" -m nasalloc recommend scheduler=asha n_trials=$N_TRIALS scheduler.max_epochs=9 \
  profile="$PROFILE" cluster.gpus=1 cluster.gpus_per_node=1 "allocations=$ALLOCATIONS" \
  adaptive=false seeds="$SEEDS" workers=2 out_dir="$WORK/recommend"

RUNS=()
for k in "${KS[@]}"; do
  dir=$WORK/run_k${k/\//-}
  step "run k=$k" "$BUDGET_RUN" "$PY" -m nasalloc run "${DEVICES[@]}" train=synthetic "${RUN[@]}" "${SEARCH[@]}" \
    "gpus_per_trial=$k" profile="$PROFILE" progress=plain out_dir="$dir"
  check_run "$dir" 0
  RUNS+=("'$dir'")
done
if [ "$SHARE" = 1 ]; then
  dir=$WORK/run_k1-2_then_1
  step "run k=[1/2,1]" "$BUDGET_RUN" "$PY" -m nasalloc run "${DEVICES[@]}" train=synthetic "${RUN[@]}" "${SEARCH[@]}" \
    'gpus_per_trial=["1/2",1]' profile="$PROFILE" progress=plain out_dir="$dir"
  check_run "$dir" 1
  RUNS+=("'$dir'")
fi

step validate 60 "$PY" -m nasalloc validate "run=[$(IFS=,; echo "${RUNS[*]}")]" profile="$PROFILE" \
  update_profile=true out_dir="$WORK/validate"
[ -f "$WORK/validate/validation.json" ] || fail "validate wrote no validation.json"
