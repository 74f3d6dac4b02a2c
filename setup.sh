#!/usr/bin/env bash
# Set up a virtual environment in .venv with everything the project and its tests need, then edit
# the bundled sample photo with the tiny offline model. Safe to run again.
#
#   PYTHON=python3.12 bash setup.sh    # pick the interpreter (3.10+)
#   VENV=/path/to/venv bash setup.sh   # pick where the environment goes
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
VPY="$VENV/bin/python"

# torch first, so that the project's plain `torch` requirement is already met and pip never pulls
# gigabytes of CUDA packages onto a machine without a GPU.
if ! "$VPY" -c "import torch" 2>/dev/null; then
  wheels=$(mktemp -d)
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$VPY" -m pip install "torch>=2.13"                     # CUDA build from PyPI
  elif "$VPY" -m pip download -q --no-deps --no-index "torch==2.13.0" -d "$wheels" >/dev/null 2>&1; then
    "$VPY" -m pip install "$wheels"/torch-*.whl              # a CPU wheel pip already has locally (find-links)
  else
    "$VPY" -m pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
  rm -rf "$wheels"
fi
# the project itself, editable, with the test tools; skipped when pyproject.toml is unchanged
stamp="$VENV/.promptedit-installed"
want=$("$VPY" -c "import hashlib; print(hashlib.sha256(open('pyproject.toml', 'rb').read()).hexdigest())")
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VPY" -m pip install -q -e ".[test]"
  "$VPY" -m pip check
  echo "$want" > "$stamp"
fi

# a browser for the web app's test (Playwright drives the system's Chromium; nothing is downloaded
# at test time): Debian's package where apt-get and root (or sudo) are there, else say what to install
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && [ -z "${PROMPTEDIT_CHROMIUM:-}" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    echo "setup.sh: installing Chromium for the browser test (apt-get install chromium)"
    $sudo apt-get update -qq >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || echo "setup.sh: apt-get could not install chromium: the browser test will skip (CI=true: fail)"
  else
    echo "setup.sh: no Chromium, so the browser test will skip. Install Chromium or Chrome (Debian/Ubuntu:" \
         "sudo apt-get install chromium; macOS: brew install --cask chromium) and, if it is not on PATH as" \
         "chromium, set PROMPTEDIT_CHROMIUM=/path/to/it"
  fi
fi

# the quickstart edit: a bundled rendered photo, the shipped shapes model (trained here, offline),
# pictures in outputs/quickstart
"$VPY" -m pipelines.edit_real assets/red_circle.png \
  --src "a red circle on a white background" --tgt "a blue circle on a white background" \
  --model shapes --out outputs/quickstart --attention --quiet
