#!/usr/bin/env bash
# One-command set-up of a fresh machine: .venv with PyTorch, fedsynth and its test extras,
# and Debian's Fashion-MNIST where apt is available. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
case "$(uname -m)" in
  aarch64|arm64) TORCH=(torch==2.9.1 torchvision==0.24.1) ;;   # CPU wheels for ARM
  *)             TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
esac

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${TORCH[@]}"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO=$(command -v sudo || true); fi
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; use --download or --data-dir" >&2
  else
    echo "setup: not root and no sudo: install dataset-fashion-mnist yourself, or use --download / --data-dir" >&2
  fi
fi
echo "setup: done. Try: .venv/bin/fedsynth --help"
