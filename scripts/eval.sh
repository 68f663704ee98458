#!/usr/bin/env bash
# Separation quality harness (eval/eval.py): makes its own ground truth, runs it through the
# real system (`target/release/dme up`), and writes eval/results.md and eval/results.json.
# Installs what it needs: the project venv (scripts/setup.sh), eval/requirements.txt into it,
# and Debian's fluidsynth + fluid-soundfont-gm for the MIDI set; builds the release binary.
# Arguments go to eval/eval.py (--model PATH, --sets synthetic,midi, --separators N, --keep DIR).
# Exit status 1 when the model does not beat mix/4 on every stem of the synthetic set.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
eval "$(scripts/setup.sh)"
venv="$root/.tools/venv"
req="$root/eval/requirements.txt"
stamp="$venv/.eval-requirements"
if ! cmp -s "$req" "$stamp"; then
  echo "eval: installing $req" >&2
  "$venv/bin/pip" install --disable-pip-version-check -q -r "$req" >&2
  cp "$req" "$stamp"
fi
if ! command -v fluidsynth >/dev/null || [ ! -f /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; then
  echo "eval: installing fluidsynth and fluid-soundfont-gm (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends fluidsynth fluid-soundfont-gm >&2 \
    || { apt-get update >&2 && apt-get install -y --no-install-recommends fluidsynth fluid-soundfont-gm >&2; }
fi
cargo build --release --bin dme >&2
exec "$venv/bin/python" eval/eval.py "$@"
