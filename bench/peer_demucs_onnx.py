#!/usr/bin/env python3
"""The peer of issue 15's item 3: the `demucs-onnx` package's own chunked loop, timed.

Usage (inside the venv of scripts/export_htdemucs.py, which installs demucs-onnx 0.3.4):
    .tools/htdemucs-venv/bin/python bench/peer_demucs_onnx.py MODEL.onnx SONG.mp3 OUT_DIR

Does what `demucs_onnx.separate(song, out_dir, model="htdemucs", mix_stems=all)` does, on a
local model file instead of one downloaded from the Hugging Face hub (nothing is fetched
here): the package's own `load_audio`, an ONNX Runtime session made by its `_make_session`
(CPU; its default threads, one per core), its `_chunked_separate_single` overlap-add loop,
and its `write_audio` of every stem and of their sum. Prints one JSON object: the seconds of
each phase and of the whole, and this process's peak RSS (ru_maxrss) in bytes. dme's bench
(`make bench-htdemucs`) runs it; the model is the export of scripts/export_htdemucs.py, which
is built with demucs-onnx's own export patches, so it is the peer's export of those weights.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from demucs_onnx import inference
from demucs_onnx._audio import load_audio, write_audio

SOURCES = ("drums", "bass", "other", "vocals")


def main() -> None:
    model, song, out = (Path(a) for a in sys.argv[1:4])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    audio, native_sr = load_audio(song, target_sr=inference.SAMPLE_RATE)
    t1 = time.perf_counter()
    session = inference._make_session(model, ["CPUExecutionProvider"])
    t2 = time.perf_counter()
    stems = inference._chunked_separate_single(session, SOURCES, audio, progress=False)
    t3 = time.perf_counter()
    for name, samples in stems.items():
        write_audio(out / f"{name}.wav", samples, native_sr)
    mix = sum(stems[s] for s in SOURCES)
    write_audio(out / "mix.wav", mix, native_sr)
    t4 = time.perf_counter()
    print(json.dumps({
        "decode_s": t1 - t0,
        "session_s": t2 - t1,
        "separate_s": t3 - t2,
        "write_s": t4 - t3,
        "total_s": t4 - t0,
        "native_sr": native_sr,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
