#!/usr/bin/env bash
# Create the project's virtual environment and install gxd_optim with its extras.
# - A torch already importable by $PYTHON is kept (the venv sees it; nothing is reinstalled).
# - Otherwise torch is installed from a locally provided build when the machine has one
#   (e.g. pip's find-links), else the CPU build unless an NVIDIA GPU is present,
#   so a machine without a GPU never downloads the CUDA wheels.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "install: keeping the torch $("$PYTHON" -c 'import torch; print(torch.__version__)') of $PYTHON"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  if "${PIP[@]}" download -q --no-index --no-deps -d "$tmp" "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    echo "install: torch $TORCH_VERSION from the build provided on this machine"
    "${PIP[@]}" install -q "torch==$TORCH_VERSION"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: torch with CUDA (an NVIDIA GPU is present)"
    "${PIP[@]}" install -q torch
  else
    echo "install: torch, CPU build (no GPU found)"
    "${PIP[@]}" install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${PIP[@]}" install -q -e ".[test,docs,bench,integration]"
"$VENV/bin/python" -c "import torch, gxd_optim; print('install: gxd_optim', gxd_optim.__version__, 'with torch', torch.__version__)"
