#!/usr/bin/env python3
"""Export a randomly initialised HT-Demucs to ONNX: the real architecture, no pretrained weights.

Usage:
    python3 scripts/export_htdemucs.py [--out models/htdemucs-random.onnx] [--seed 0]
    make htdemucs-model

Why: dme's embedded model is a small DSP graph. This file gives the pipeline a model with the
size, operators and cost of the real thing (demucs v4 `htdemucs`: hybrid time/spectrogram
U-Net with a cross-domain transformer), so the system can be tested and timed with it. Its
weights are random (seeded), so its stems are noise-like, not music: it is for plumbing,
determinism and speed, never for quality.

What it does:
1. Creates its own venv (.tools/htdemucs-venv) and installs demucs==4.0.1,
   demucs-onnx[export]==0.3.4 (PyTorch 2.4, with CUDA wheels: about 5 GB, a few minutes) and
   onnxruntime==1.31.1 (the version dme loads), then re-runs itself inside it.
2. Builds `demucs.htdemucs.HTDemucs` with the released `htdemucs` configuration (the class
   defaults except bottom_channels=512 and dconv_mode=3, see HTDEMUCS_CONFIG; sources
   drums,bass,other,vocals; 2 audio channels; 44.1 kHz; segment 39/5 s) after
   `torch.manual_seed(seed)`.
3. Applies demucs-onnx's export patches (real-valued STFT/iSTFT as convolutions, float
   segment, no random positional shift, primitive multi-head attention), checks the patched
   model against the original in PyTorch, exports with the legacy exporter at opset 17, and
   checks the ONNX model against PyTorch in onnxruntime (max abs diff <= 1e-3).
4. Makes it follow models/README.md's contract: input `mix` [1,2,343980], output
   `stems` [1,4,2,343980] (a fixed-length model: its segment is 343980 samples, 7.8 s),
   metadata sources=drums,bass,other,vocals, name=htdemucs-random, sample_rate=44100,
   IR version <= 10 (ONNX Runtime 1.31 reads at most 13; the project's models use 10).
5. Loads the result in onnxruntime 1.31.1 and times one inference on one thread.

The output (a few hundred MB) is git-ignored. Not run by CI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".tools", "htdemucs-venv")
PACKAGES = ["demucs==4.0.1", "demucs-onnx[export]==0.3.4", "onnxruntime==1.31.1"]
SOURCES = ["drums", "bass", "other", "vocals"]
SAMPLE_RATE = 44100
# htdemucs' training segment, 39/5 s = 343980 samples at 44.1 kHz: the exported graph's length.
SEGMENT_SAMPLES = 343_980
MODEL_NAME = "htdemucs-random"
# Where the released 4-stem `htdemucs` differs from HTDemucs' defaults: a 512-channel
# transformer with 1x1 up/down projections around it, and DConv residual branches in the
# decoder as well as the encoder. Everything else (48 channels, depth 4, nfft 4096, 5
# cross-transformer layers of 8 heads, ...) is the class default. With these the model has
# about 42 M parameters, as the released one; with the bare defaults it would have 26.9 M
# (the size of htdemucs_6s, which does use bottom_channels=0).
HTDEMUCS_CONFIG = {"bottom_channels": 512, "dconv_mode": 3}
# ONNX Runtime 1.31 accepts IR <= 13; models/README.md keeps every model at 10.
MAX_IR_VERSION = 10


def ensure_venv() -> None:
    """Creates the venv and installs the pinned packages, then re-executes this script in it."""
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    stamp = os.path.join(VENV, ".export-requirements")
    wanted = "\n".join(PACKAGES) + "\n"
    if not os.path.exists(py):
        print(f"export: creating {VENV}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    if not os.path.exists(stamp) or open(stamp).read() != wanted:
        print(f"export: installing {' '.join(PACKAGES)} (about 5 GB of wheels)", file=sys.stderr)
        subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", *PACKAGES], check=True)
        with open(stamp, "w") as f:
            f.write(wanted)
    os.execv(py, [py, os.path.abspath(__file__), *sys.argv[1:]])


def build_model(seed: int):
    from fractions import Fraction

    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(sources=list(SOURCES), audio_channels=2, samplerate=SAMPLE_RATE, segment=Fraction(39, 5), **HTDEMUCS_CONFIG)
    return model.eval()


def load_pretrained(name: str):
    """The released weights of `name` (e.g. htdemucs, htdemucs_6s), downloaded by demucs itself:
    needs internet, so it cannot run on the offline development machines (untested there)."""
    from demucs.apply import BagOfModels
    from demucs.pretrained import get_model

    model = get_model(name)
    if isinstance(model, BagOfModels):
        if len(model.models) != 1:
            raise SystemExit(f"{name} is a bag of {len(model.models)} models; export a single-model one (htdemucs, htdemucs_6s)")
        model = model.models[0]
    return model.eval()


def export(model, out: str) -> None:
    import copy

    from demucs_onnx.export.exporter import _export_one, _onnx_check, _verify_onnx_parity, _verify_pytorch_parity
    from demucs_onnx.export.patch import patch_htdemucs_for_onnx
    from pathlib import Path

    _verify_pytorch_parity(model, n_samples=SEGMENT_SAMPLES, bag_index=None, stem="all", tolerance=1e-3, verbose=True)
    patched = patch_htdemucs_for_onnx(copy.deepcopy(model))
    _export_one(patched, Path(out), n_samples=SEGMENT_SAMPLES, opset=17, verbose=True)
    _onnx_check(Path(out), verbose=True)
    _verify_onnx_parity(model, Path(out), n_samples=SEGMENT_SAMPLES, bag_index=None, stem="all", tolerance=1e-3, verbose=True)


def conform(path: str) -> None:
    """Names, shapes, metadata and IR version as models/README.md asks."""
    import onnx

    m = onnx.load(path)
    g = m.graph
    real_inputs = [i for i in g.input if i.name not in {t.name for t in g.initializer}]
    if len(real_inputs) != 1 or len(g.output) != 1:
        raise SystemExit(f"expected one input and one output, got {[i.name for i in real_inputs]} -> {[o.name for o in g.output]}")
    renames = {real_inputs[0].name: "mix", g.output[0].name: "stems"}
    for node in g.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    real_inputs[0].name = "mix"
    g.output[0].name = "stems"
    for value, dims in ((real_inputs[0], [1, 2, SEGMENT_SAMPLES]), (g.output[0], [1, len(SOURCES), 2, SEGMENT_SAMPLES])):
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            shape.dim.add().dim_value = d
    del m.metadata_props[:]
    for k, v in sorted({"name": MODEL_NAME, "sample_rate": str(SAMPLE_RATE), "sources": ",".join(SOURCES)}.items()):
        m.metadata_props.add(key=k, value=v)
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def check(path: str) -> None:
    """Loads the model in onnxruntime on one thread and times one inference of a full segment."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    m = onnx.load(path, load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    print(f"model: {path}: {os.path.getsize(path) / 1e6:.1f} MB, IR {m.ir_version}, opsets "
          f"{[(o.domain or 'ai.onnx', o.version) for o in m.opset_import]}, {len(m.graph.node)} nodes, metadata {meta}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    t0 = time.perf_counter()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    i, o = sess.get_inputs()[0], sess.get_outputs()[0]
    print(f"onnxruntime {ort.__version__}: loaded in {load_s:.1f} s; input {i.name} {i.shape}, output {o.name} {o.shape}")
    x = (0.1 * np.random.default_rng(0).standard_normal((1, 2, SEGMENT_SAMPLES))).astype(np.float32)
    t0 = time.perf_counter()
    y = sess.run(None, {"mix": x})[0]
    dt = time.perf_counter() - t0
    if y.shape != (1, len(SOURCES), 2, SEGMENT_SAMPLES) or not np.all(np.isfinite(y)):
        raise SystemExit(f"bad output: shape {y.shape}, finite {np.all(np.isfinite(y))}")
    print(f"one inference of {SEGMENT_SAMPLES} samples (7.8 s) on 1 thread: {dt:.2f} s "
          f"(output RMS {float(np.sqrt(np.mean(y.astype(np.float64) ** 2))):.4f}, input RMS 0.1)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "htdemucs-random.onnx"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-only", action="store_true", help="only load and time an existing file")
    ap.add_argument("--pretrained", metavar="NAME", help="export demucs' released weights NAME (htdemucs, htdemucs_6s) instead of random ones; needs internet")
    args = ap.parse_args()
    ensure_venv()
    out = os.path.abspath(args.out)
    if not args.check_only:
        import torch

        torch.set_num_threads(1)  # the machine is shared; export is a one-off
        t0 = time.perf_counter()
        if args.pretrained:
            global MODEL_NAME, SOURCES
            model = load_pretrained(args.pretrained)
            MODEL_NAME, SOURCES = args.pretrained, list(model.sources)
        else:
            model = build_model(args.seed)
        params = sum(p.numel() for p in model.parameters())
        print(f"{MODEL_NAME} ({'released weights' if args.pretrained else f'htdemucs configuration, seed {args.seed}'}): {params / 1e6:.2f} M parameters")
        tmp = out + ".export.tmp"  # git-ignored by *.onnx.*.tmp; replaced only when complete
        export(model, tmp)
        conform(tmp)
        os.replace(tmp, out)
        print(f"exported {out} in {time.perf_counter() - t0:.0f} s (including the parity checks)")
    check(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
