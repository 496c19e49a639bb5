#!/usr/bin/env bash
# Run HERE, before `scripts/gpu_check.sh` runs on a lent GPU machine: that machine reaches no
# package registry, and its python3 (torch with CUDA, numpy, scipy, matplotlib, rich, pyyaml)
# lacks hydra-core, omegaconf, antlr4-python3-runtime and simpy. This writes their wheels,
# plus a wheel of nasalloc itself (used only if the editable install fails there), into
# .gpu_wheels/ (ignored by git; well under 1 MB), to be carried to the machine.
#
#   . .venv/bin/activate && bash scripts/gpu_prepare.sh      # then carry .gpu_wheels
#
# Versions are the ones installed in this environment (PY, default: python), so the GPU
# machine runs what the tests here ran. antlr4-python3-runtime 4.9.3 (hydra-core 1.3 pins
# 4.9.*) is published as a source archive only, so its wheel is built here (pure Python).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python}
DEST=${WHEELS:-$ROOT/.gpu_wheels}

versions=$("$PY" - <<'EOF' 2>/dev/null
import importlib.metadata as m
print(" ".join(f"{d}=={m.version(d)}" for d in ("hydra-core", "omegaconf", "simpy")))
EOF
) || { echo "gpu_prepare: hydra-core, omegaconf or simpy is not installed for $PY; install the project first (README, Set up)" >&2; exit 2; }

rm -rf "$DEST"
mkdir -p "$DEST"
# shellcheck disable=SC2086 # one word per requirement
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DEST" $versions
"$PY" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$ROOT"
for name in hydra_core omegaconf simpy antlr4_python3_runtime nasalloc; do
  ls "$DEST"/${name}-*.whl >/dev/null 2>&1 || { echo "gpu_prepare: no $name wheel was written to $DEST" >&2; exit 1; }
done
# which sources nasalloc's wheel was built from (the same line is in gpu_check.sh, which warns on a mismatch)
(cd "$ROOT" && find nasalloc sim execute calibration validate conf pyproject.toml -type f \
  \( -name '*.py' -o -name '*.yaml' -o -name '*.toml' \) | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16) \
  >"$DEST/nasalloc-sources.sha"
ls -l "$DEST"
echo "gpu_prepare: $(du -sh "$DEST" | cut -f1) in $DEST ($versions antlr4-python3-runtime==4.9.3 nasalloc);" \
     "on the GPU machine run: bash scripts/gpu_check.sh, carrying ${DEST#"$ROOT"/}"
