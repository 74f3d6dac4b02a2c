#!/usr/bin/env bash
# Run HERE (a machine whose pip reaches PyPI), before the GPU run: download the wheels that the GPU
# machine's image lacks into .whl/gpu/ (git-ignored: /.whl/ in .gitignore), for scripts/gpu_run.sh there.
#
#   scripts/gpu_wheels.sh            # env: GPU_WHEELS=folder (.whl/gpu), PIP="python -m pip" (.venv's),
#                                    #      GPU_EXTRA="name==version ..." (more wheels, see below)
#
# The image (the device tool's KINDS.md, package list of 2026-11-17: Python 3.12.3, torch 2.11.0,
# transformers 5.17.0, accelerate 1.15.0, huggingface_hub 1.33.0, safetensors 0.8.0, numpy, pillow,
# regex, requests, filelock, tqdm, opencv-python-headless, matplotlib, torchmetrics) holds every
# package that diffusers 0.42.1 and the benchmark import, except diffusers. So only diffusers is
# downloaded, without its dependencies (6.4 MB). Older than the project's pins there: torch 2.11
# (pinned >=2.13) and transformers 5.17 (>=5.24); the benchmark runs on them (transformers 5.17 with
# hub 1.33 was checked here with `--quick`; torch 2.11 could not be, no CPU wheel is reachable here),
# and the project is run from its folder (PYTHONPATH), not installed, so pip never weighs the pins.
#
# Should the image change, GPU_EXTRA names more wheels (fetched for CPython 3.12 on x86-64 Linux,
# --no-deps), e.g. GPU_EXTRA="huggingface_hub==1.33.0 requests==2.34.2" (diffusers needs hub >=1.32,
# transformers 5.17 <2; requests is checked when diffusers is imported). Not opencv: its wheel
# (50 MB for 4.11, 64 MB for 5.1) would take the working tree over the 64 MiB that travels.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${GPU_WHEELS:-.whl/gpu}"
read -r -a pip <<<"${PIP:-.venv/bin/python -m pip}"
case "$dir" in
  .whl/*) git check-ignore -q "$dir/diffusers.whl" || { echo "gpu_wheels: $dir is not git-ignored: add /.whl/ to .gitignore" >&2; exit 1; } ;;
esac
mkdir -p "$dir"
"${pip[@]}" download -q --no-deps --only-binary=:all: -d "$dir" diffusers==0.42.1
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for spec in ${GPU_EXTRA:-}; do
  "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d "$dir" "$spec"
done
ls -l "$dir"/*.whl | awk '{printf "%8.1f MB  %s\n", $5 / 1e6, $NF}'
wheels=$(du -cb "$dir"/*.whl | tail -1 | cut -f1)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | grep total$ | awk '{s += $1} END {print s}')
total=$((wheels + tree))
awk -v w="$wheels" -v t="$tree" 'BEGIN {printf "gpu_wheels: %.1f MiB of wheels + %.1f MiB of working tree = %.1f MiB to carry (limit 64 MiB)\n", w / 1048576, t / 1048576, (w + t) / 1048576}'
if (( total > 64 * 1048576 )); then echo "gpu_wheels: over 64 MiB: drop a GPU_EXTRA wheel" >&2; exit 1; fi
