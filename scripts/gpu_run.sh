#!/usr/bin/env bash
# Run ON THE GPU MACHINE, in the repository root: install the wheels that scripts/gpu_wheels.sh
# downloaded (beside the image's packages, into a folder of their own, no dependencies), then run
# `python3 -m bench gpu` from this checkout (PYTHONPATH: nothing to build, no setuptools) under a
# timeout, writing bench-gpu.json, bench-gpu.md and the logs into OUT_DIR.
#
#   scripts/gpu_run.sh OUT_DIR [more `bench gpu` arguments]
#   env: GPU_WHEELS (.whl/gpu), GPU_PYTHON (python3: the image's, with CUDA torch), GPU_SITE
#        (/tmp/promptedit-site), BUDGET_S (420: the benchmark's --budget-s), TIMEOUT_S (510)
#
# It refuses in one line, exit 2, without the wheel folder or its diffusers wheel, without CUDA,
# or when a package the benchmark imports is still missing after the install.
set -uo pipefail
refuse() { echo "gpu_run: $*" >&2; exit 2; }
[ $# -ge 1 ] || refuse "usage: scripts/gpu_run.sh OUT_DIR [bench gpu arguments]"
out=$1; shift
cd "$(dirname "$0")/.." || refuse "cannot enter the repository root"
wheels=${GPU_WHEELS:-.whl/gpu}
py=${GPU_PYTHON:-python3}
budget=${BUDGET_S:-420}
limit=${TIMEOUT_S:-510}
[ -d "$wheels" ] || refuse "no wheel folder $wheels: run scripts/gpu_wheels.sh where pip reaches PyPI, and carry $wheels"
compgen -G "$wheels/diffusers-*.whl" >/dev/null || refuse "no diffusers wheel in $wheels: run scripts/gpu_wheels.sh"
command -v "$py" >/dev/null || refuse "no $py on this machine (GPU_PYTHON names the Python that has CUDA torch)"
"$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' >/dev/null 2>&1
case $? in
  0) ;;
  3) refuse "CUDA is not available to $py's torch: this runs on a GPU machine (on a CPU: python -m bench gpu --quick --out DIR)" ;;
  *) refuse "$py cannot import torch (GPU_PYTHON names the Python that has CUDA torch)" ;;
esac
mkdir -p "$out" || refuse "cannot create $out"
out=$(cd "$out" && pwd)
site=${GPU_SITE:-/tmp/promptedit-site}
rm -rf "$site" && mkdir -p "$site" || refuse "cannot create $site"
"$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
  >"$out/pip.log" 2>&1 || refuse "pip could not install $wheels/*.whl (see $out/pip.log)"
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
missing=$("$py" - <<'PY' 2>&1
import importlib
bad = []
for name in ("diffusers", "transformers", "accelerate", "safetensors", "PIL", "cv2", "numpy", "tqdm", "requests"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # an import that fails for any reason leaves the benchmark unable to run
        bad.append(f"{name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
print("; ".join(bad))
PY
)
[ -z "$missing" ] || refuse "missing after the install: $missing (add its wheel with GPU_EXTRA=... scripts/gpu_wheels.sh)"
echo "gpu_run: $("$py" -c 'import torch, diffusers; print(torch.__version__, torch.cuda.get_device_name(), "diffusers", diffusers.__version__)'); budget ${budget}s, timeout ${limit}s"
timeout "$limit" "$py" -m bench gpu --out "$out" --budget-s "$budget" "$@" 2>&1 | tee "$out/bench-gpu.log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 124 ]; then
  echo "gpu_run: stopped after ${limit}s; $out/bench-gpu.json holds the rows measured before" >&2
fi
exit "$rc"
