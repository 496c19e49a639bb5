#!/usr/bin/env bash
# The one prepared GPU check (about 8 minutes on one H100/H200) for a session that is lent a
# GPU machine (see the device tool's README). It runs the whole loop on the GPU:
#   calibrate the synthetic GPU trainer at k = 1 and with 2 and 4 trials sharing the GPU,
#   recommend for one GPU (k = 1/4, 1/2, 1), run the search for real at each allocation,
#   validate each, and pack everything under $OUT.
# The device machine has no network: carry a virtual environment that has CUDA torch and
# nasalloc installed (e.g. `python3 -m venv .venv-gpu && .venv-gpu/bin/pip install torch==2.14.1
# -e .`, carried as `.venv-gpu`), and call:  PY=.venv-gpu/bin/python bash scripts/gpu_check.sh
# Results come back as at most 8 files (the device tool's limit): summary.txt, the three JSON
# reports, the profile, and one tarball of all folders.
# DEVICE=cpu runs the same steps tiny on CPU slots, to check the script itself without a GPU.
set -euo pipefail
OUT=${OUT:-outputs/gpu_check}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'tar -C "$WORK" -czf "$OUT/gpu_check.tar.gz" . 2>/dev/null || true' EXIT
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }

if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.csv"
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/summary.txt"
  # GPU-sized synthetic trainer: big enough that one trial keeps the GPU busy for a while.
  PARAMS=(n_samples=65536 dim=1024 width=4096 batch_size=512 scaling=strong seed=0)
  DEVICES=(devices=cuda 'devices.ids=[0]')
else
  PARAMS=(n_samples=2048 dim=32 width=64 batch_size=64 scaling=strong seed=0)
  DEVICES=(devices=cpu devices.count=1)
fi
BATCH=$(printf '%s\n' "${PARAMS[@]}" | sed -n 's/^batch_size=//p')
CAL=(); RUN=()
for p in "${PARAMS[@]}"; do CAL+=("++train.config.${p}"); RUN+=("++train.params.${p}"); done
SEARCH=(scheduler=asha scheduler.n_trials=16 scheduler.max_epochs=9 seed=0)

log "calibrate (k=1, sharing m=2 and m=4)"
timeout 240 "$PY" -m nasalloc calibrate train.entrypoint=nasalloc.execute.trainers.synthetic:train \
  "${CAL[@]}" train.batch_per_device="$BATCH" calibration.device="$DEVICE" calibration.gpus_per_trial=[1] \
  "calibration.share=[2,4]" calibration.time_limit_s=15 name=synthetic_gpu out_dir="$WORK/calibrate" | tee -a "$OUT/summary.txt"
PROFILE="$WORK/calibrate/profile.yaml"
cp "$PROFILE" "$OUT/profile.yaml"

log "recommend for one GPU"
"$PY" -m nasalloc recommend scheduler=asha n_trials=16 scheduler.max_epochs=9 profile="$PROFILE" \
  cluster.gpus=1 cluster.gpus_per_node=1 'allocations=["1/4","1/2",1]' seeds=5 workers=4 \
  out_dir="$WORK/recommend" | tail -12 | tee -a "$OUT/summary.txt"
cp "$WORK/recommend/recommendation.json" "$OUT/"

RUNS=()
for k in 0.25 0.5 1; do
  dir="$WORK/run_k${k}"
  log "run k=$k"
  timeout 150 "$PY" -m nasalloc run "${DEVICES[@]}" train=synthetic "${RUN[@]}" "${SEARCH[@]}" \
    gpus_per_trial="$k" profile="$PROFILE" progress=plain out_dir="$dir" | tail -16 | tee -a "$OUT/summary.txt"
  RUNS+=("$dir")
done

log "validate"
"$PY" -m nasalloc validate "run=[$(IFS=,; echo "${RUNS[*]}")]" profile="$PROFILE" update_profile=true \
  out_dir="$WORK/validate" | tee -a "$OUT/summary.txt"
cp "$WORK/validate/validation.json" "$OUT/"
log "done"
