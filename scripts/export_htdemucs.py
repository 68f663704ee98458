#!/usr/bin/env python3
"""Export a randomly initialised HT-Demucs to ONNX: the real architecture, no pretrained weights.

Usage:
    python3 scripts/export_htdemucs.py [--out models/htdemucs-random.onnx] [--seed 0]
    python3 scripts/export_htdemucs.py --spectral onnx   # models/htdemucs-random-dft.onnx
    python3 scripts/export_htdemucs.py --compare   # only the equality check of the two files
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

`--spectral onnx` exports the same weights with the STFT/iSTFT as ONNX's own `STFT` and
`DFT` operators instead of convolutions (see patch_spectral_onnx): same contract, name
htdemucs-random-dft, default output models/htdemucs-random-dft.onnx, 174 MB instead of 316
(no DFT kernels as weights), faster (onnxruntime's STFT/DFT use an FFT: about 1.2x per
segment on the 2-core development machine, see bench/results/export.json). It then checks its
stems against the convolution export of the same seed (--against, default
models/htdemucs-random.onnx, exported first when missing) in onnxruntime on three mixes: max
abs difference <= 1e-4, else exit 1 (`--compare` runs this check alone).
scripts/bench_export.py (`make bench-export`) times the two against each other.

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


def ensure_venv(script: str = __file__) -> None:
    """Creates the venv and installs the pinned packages, then re-executes `script` in it."""
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
    os.execv(py, [py, os.path.abspath(script), *sys.argv[1:]])


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


def export(model, out: str, spectral: str = "conv") -> None:
    import copy

    from demucs_onnx.export.exporter import _export_one, _onnx_check, _verify_onnx_parity, _verify_pytorch_parity
    from demucs_onnx.export.patch import patch_htdemucs_for_onnx
    from pathlib import Path

    if spectral == "conv":
        _verify_pytorch_parity(model, n_samples=SEGMENT_SAMPLES, bag_index=None, stem="all", tolerance=1e-3, verbose=True)
        patched = patch_htdemucs_for_onnx(copy.deepcopy(model))
    else:
        patched = patch_spectral_onnx(patch_htdemucs_for_onnx(copy.deepcopy(model)))
        verify_pytorch_parity(model, patched, tolerance=1e-3)
    _export_one(patched, Path(out), n_samples=SEGMENT_SAMPLES, opset=17, verbose=True)
    _onnx_check(Path(out), verbose=True)
    _verify_onnx_parity(model, Path(out), n_samples=SEGMENT_SAMPLES, bag_index=None, stem="all", tolerance=1e-3, verbose=True)


def patch_spectral_onnx(patched):
    """Replaces demucs-onnx's convolution STFT/iSTFT (already patched in) with ONNX's own operators.

    Forward: demucs' `_spec` reflect-pads the segment by 1536 samples (3/2 hop) on the left and
    up to a whole number of hops plus 1536 on the right, then runs a centred, normalised STFT
    (periodic Hann, n_fft 4096, hop 1024) and keeps frames 2..2+le and bins 0..2047. Frames
    2..2+le of the centred STFT are exactly the frames of the uncentred STFT of the padded
    signal, so the graph has one `STFT` (onesided) with the window times 1/sqrt(4096) = 1/64
    (exact) and no second padding.

    Inverse: `_ispec` adds a zero Nyquist bin and two zero frames on each side, runs a
    normalised, centred iSTFT and crops. Here two real signals (the left and right channels of
    a stem) share one complex inverse FFT per frame: ifft(L + iR) = l + ir, with L + iR built
    from the one-sided spectra and their mirrored conjugates (Sub/Add, Concat, a reversing
    Slice), then one `DFT` (inverse, scaled by 1/4096), times the synthesis window
    w * sqrt(4096) / 1.5 (1.5 = the overlap-added w^2 of a periodic Hann at hop n_fft/4,
    constant over every kept sample; the zero frames only ever add zeros), overlap-add as the 4
    hop-long pieces of each frame added with shifts of 0..3 hops (Pad + Add, no ConvTranspose),
    then the same crop. The zero frames are never computed.

    Both operators are `torch.autograd.Function`s: `forward` computes the same in torch (so
    the patched model runs and traces), `symbolic` emits the ONNX node for the legacy exporter.
    """
    import math
    import types

    import torch
    import torch.nn.functional as F

    n_fft, hop = 4096, 1024
    if patched.nfft != n_fft or patched.hop_length != hop or len(patched.sources) * patched.audio_channels % 2:
        raise SystemExit(f"--spectral onnx expects nfft {n_fft}, hop {hop} and an even number of output signals; the model has "
                         f"{patched.nfft}, {patched.hop_length}, {len(patched.sources)} x {patched.audio_channels}")
    window64 = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    analysis = (window64 / math.sqrt(n_fft)).float()
    # Overlap-added squared window: its constant interior value, checked below on the kept samples.
    ola = 1.5
    synthesis = (window64 * math.sqrt(n_fft) / ola).float()
    synthesis2 = synthesis.reshape(4, hop, 1).repeat(1, 1, 2)  # for left and right: no inner broadcast

    def typed(value, sizes):
        """The legacy exporter leaves these nodes' outputs untyped: float32 and the static sizes
        (the batch dimension left symbolic), so the ops after them are typed too."""
        value.setType(torch._C.TensorType.create_from_tensor(torch.empty(0)).with_sizes([None if d < 0 else d for d in sizes]))
        return value

    class OnnxSTFT(torch.autograd.Function):
        """[N, L] real -> [N, frames, n_fft/2+1, 2], uncentred, onesided: ONNX STFT's layout."""

        @staticmethod
        def forward(ctx, x, window, frames):
            z = torch.stft(x, n_fft, hop, window=window, win_length=n_fft, center=False, onesided=True, return_complex=True)
            return torch.view_as_real(z).transpose(1, 2).contiguous()

        @staticmethod
        def symbolic(g, x, window, frames):
            x3 = g.op("Unsqueeze", x, g.op("Constant", value_t=torch.tensor([2], dtype=torch.int64)))
            step = g.op("Constant", value_t=torch.tensor(hop, dtype=torch.int64))
            return typed(g.op("STFT", x3, step, window, onesided_i=1), [-1, frames, n_fft // 2 + 1, 2])

    class OnnxIDFT(torch.autograd.Function):
        """[N, frames, n_fft, 2] complex -> the same, inverse DFT along axis 2 (scaled by
        1/n_fft): ONNX DFT inverse=1."""

        @staticmethod
        def forward(ctx, z, frames):
            return torch.view_as_real(torch.fft.ifft(torch.view_as_complex(z.contiguous()), dim=2))

        @staticmethod
        def symbolic(g, z, frames):
            return typed(g.op("DFT", z, axis_i=2, inverse_i=1), [-1, frames, n_fft, 2])

    def _spec_onnx(self_, x):
        *other, length = x.shape
        le = math.ceil(length / hop)
        pad = hop // 2 * 3
        x = F.pad(x, (pad, pad + le * hop - length), mode="reflect")
        z = OnnxSTFT.apply(x.reshape(-1, x.shape[-1]), analysis, int(le))  # [B*C, le, 2049, 2]
        if z.shape[1] != le:
            raise AssertionError((z.shape, le))
        z = z[:, :, : n_fft // 2].permute(0, 3, 2, 1)  # [B*C, 2, 2048, le]
        return z.reshape(*other, 2, n_fft // 2, le)

    def _ispec_onnx(self_, z, length=0, scale=0):
        if scale != 0:
            raise AssertionError("only scale 0 is used by HTDemucs")
        *other, two, freqs, frames = z.shape
        pad = hop // 2 * 3
        # In _ispec's coordinates (2 zero frames first, then the centred iSTFT's n_fft/2 crop, then
        # `pad`), the kept samples start `pad` after the start of the first real frame.
        if (frames + 3) * hop < pad + length:
            raise AssertionError((frames, length))
        check_envelope(int(frames), int(length))
        # Two signals (consecutive in B x S x C order: left and right) per complex inverse DFT:
        # with L, R their full (Hermitian) spectra, ifft(L + iR) = l + ir, l and r real. Bins
        # 1..2047 of L + iR come from the one-sided ones, bins 4095..2049 from their conjugates
        # (mirrored); bin 0 takes only the real parts (irfft ignores the imaginary part of DC),
        # bin 2048 (Nyquist) is zero.
        z = z.reshape(-1, 2, 2, freqs, frames)  # [P, L/R, re/im, 2048, frames]
        lr, li, rr, ri = (z[:, c, i, 1:] for c in (0, 1) for i in (0, 1))  # bins 1..2047
        dc_l, dc_r = z[:, 0, 0, :1], z[:, 1, 0, :1]
        zero = torch.zeros_like(dc_l)
        re = torch.cat([dc_l, lr - ri, zero, torch.flip(lr + ri, [1])], 1).transpose(1, 2)  # [P, frames, 4096]
        im = torch.cat([dc_r, li + rr, zero, torch.flip(rr - li, [1])], 1).transpose(1, 2)
        y = torch.stack([re, im], -1)  # [P, frames, 4096, 2]
        x = OnnxIDFT.apply(y, int(frames))  # [P, frames, 4096, 2]: real part left, imaginary part right
        x = x.reshape(x.shape[0], frames, 4, hop, 2) * synthesis2
        # Overlap-add: hop-long piece k of frame t lands at output block t + k.
        y = sum(F.pad(x[:, :, k], (0, 0, 0, 0, k, 3 - k)) for k in range(4))  # [P, frames + 3, hop, 2]
        y = y.permute(0, 3, 1, 2).reshape(y.shape[0], 2, (frames + 3) * hop)[..., pad: pad + length]
        return y.reshape(*other, length)

    def check_envelope(frames: int, length: int) -> None:
        """_ispec divides by the overlap-added w^2 of all its frames (2 zero frames on each side
        included); over the kept samples it must be the constant `ola` folded into `synthesis`."""
        import numpy as np

        w2 = window64.numpy() ** 2
        padded = frames + 4
        env = np.zeros((padded + 3) * hop)
        for t in range(padded):
            env[t * hop: t * hop + n_fft] += w2
        start = n_fft // 2 + hop // 2 * 3  # the centred iSTFT's crop, then _ispec's
        if np.abs(env[start: start + length] - ola).max() > 1e-12:
            raise AssertionError(f"window envelope not constant over the kept samples ({frames} frames, {length} samples)")

    patched._spec = types.MethodType(_spec_onnx, patched)
    patched._ispec = types.MethodType(_ispec_onnx, patched)
    for name in ("real_stft", "real_istft"):
        if hasattr(patched, name):
            delattr(patched, name)
    return patched


def verify_pytorch_parity(model, patched, tolerance: float) -> float:
    """The patched model against the original in PyTorch (as demucs-onnx's check, for a given patch)."""
    import torch

    torch.manual_seed(0)
    dummy = torch.randn(1, 2, SEGMENT_SAMPLES, dtype=torch.float32)
    with torch.no_grad():
        diff = float((model(dummy) - patched(dummy)).abs().max())
    print(f"  PyTorch parity (all): max abs diff {diff:.6f} {'PASS' if diff <= tolerance else 'FAIL'}")
    if diff > tolerance:
        raise SystemExit(f"patched PyTorch model diverged from the original: max abs diff {diff:.6f} > {tolerance}")
    return diff


def conform(path: str, name: str | None = None) -> None:
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
    for k, v in sorted({"name": name or MODEL_NAME, "sample_rate": str(SAMPLE_RATE), "sources": ",".join(SOURCES)}.items()):
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


def session(path: str, threads: int):
    """An onnxruntime session as dme's separators open one: CPU, optimisation level ALL, no arena."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_cpu_mem_arena = False
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def compare_inputs():
    """The mixes of the equality check, all a full segment: (label, [1,2,T] float32)."""
    import numpy as np

    t = np.arange(SEGMENT_SAMPLES) / SAMPLE_RATE
    rng = np.random.default_rng(1)
    tones = np.stack([np.sin(2 * np.pi * 110 * t) + 0.5 * np.sin(2 * np.pi * 440 * t) + 0.25 * np.sin(2 * np.pi * 1760 * t),
                      np.sin(2 * np.pi * 82.5 * t + 1) + 0.5 * np.sin(2 * np.pi * 659 * t) + 0.25 * np.sin(2 * np.pi * 3520 * t)])
    tones = tones + 0.05 * rng.standard_normal(tones.shape)
    tones /= np.sqrt(np.mean(tones**2))
    return [
        ("seeded noise, RMS 1 (as demucs normalises a mix)", np.random.default_rng(0).standard_normal((1, 2, SEGMENT_SAMPLES))),
        ("tones + noise, RMS 0.05 (quiet)", 0.05 * tones[None]),
        ("tones + noise, RMS 3 (loud)", 3.0 * tones[None]),
    ]


def compare(path: str, against: str, tolerance: float = 1e-4, threads: int = 2) -> float:
    """The --spectral onnx export against the convolution export of the same weights, both in
    onnxruntime on the same mixes: the largest absolute difference of the stems (exit 1 above
    `tolerance`)."""
    import numpy as np
    import onnxruntime as ort

    print(f"comparing {path}\n     with {against} (onnxruntime {ort.__version__}, level ALL, no arena, {threads} threads)")
    worst = 0.0
    a, b = session(path, threads), session(against, threads)
    for label, x in compare_inputs():
        x = x.astype(np.float32)
        ya, yb = a.run(None, {"mix": x})[0], b.run(None, {"mix": x})[0]
        diff = float(np.abs(ya.astype(np.float64) - yb).max())
        worst = max(worst, diff)
        print(f"  {label}: max abs diff {diff:.3g} (stems peak {float(np.abs(yb).max()):.3g})")
    ok = worst <= tolerance
    print(f"max abs difference of the stems, onnx against conv export: {worst:.3g} ({'PASS' if ok else 'FAIL'}, tolerance {tolerance:g})")
    if not ok:
        print("  (a difference of order 1 means the two files were not exported with the same weights: same --seed?)")
        raise SystemExit(1)
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spectral", choices=["conv", "onnx"], default="conv",
                    help="STFT/iSTFT as convolutions (demucs-onnx's, the default) or as ONNX STFT/DFT operators")
    ap.add_argument("--out", help="default models/htdemucs-random.onnx, with --spectral onnx models/htdemucs-random-dft.onnx")
    ap.add_argument("--against", help="with --spectral onnx: the convolution export of the same weights to compare with, "
                    "exported first (same --seed) when missing; default models/htdemucs-random.onnx")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-only", action="store_true", help="only load and time an existing file")
    ap.add_argument("--compare", action="store_true", help="only compare an existing --spectral onnx export (--out, default "
                    "models/htdemucs-random-dft.onnx) with --against")
    ap.add_argument("--pretrained", metavar="NAME", help="export demucs' released weights NAME (htdemucs, htdemucs_6s) instead of random ones; needs internet")
    args = ap.parse_args()
    ensure_venv()
    dft = args.spectral == "onnx" or args.compare
    out = os.path.abspath(args.out or os.path.join(ROOT, "models", "htdemucs-random-dft.onnx" if dft else "htdemucs-random.onnx"))
    if args.pretrained and args.spectral == "onnx" and not args.against:
        raise SystemExit("--pretrained with --spectral onnx: name the convolution export of the same weights with --against")
    against = os.path.abspath(args.against or os.path.join(ROOT, "models", "htdemucs-random.onnx"))
    if args.compare:
        compare(out, against)
        return 0
    if not args.check_only:
        import torch

        torch.set_num_threads(1)  # the machine is shared; export is a one-off
        t0 = time.perf_counter()
        global MODEL_NAME, SOURCES
        if args.pretrained:
            model = load_pretrained(args.pretrained)
            MODEL_NAME, SOURCES = args.pretrained, list(model.sources)
        else:
            model = build_model(args.seed)
        params = sum(p.numel() for p in model.parameters())
        print(f"{MODEL_NAME} ({'released weights' if args.pretrained else f'htdemucs configuration, seed {args.seed}'}): {params / 1e6:.2f} M parameters")
        if args.spectral == "onnx" and not os.path.exists(against):
            print(f"{against} is missing: exporting the convolution model of the same weights first")
            tmp = against + ".export.tmp"
            export(model, tmp, "conv")
            conform(tmp)
            os.replace(tmp, against)
        tmp = out + ".export.tmp"  # git-ignored by *.onnx.*.tmp; replaced only when complete
        export(model, tmp, args.spectral)
        conform(tmp, MODEL_NAME + ("-dft" if args.spectral == "onnx" else ""))
        os.replace(tmp, out)
        print(f"exported {out} in {time.perf_counter() - t0:.0f} s (including the parity checks)")
    check(out)
    if args.spectral == "onnx" and not args.check_only:
        compare(out, against)
    return 0


if __name__ == "__main__":
    sys.exit(main())
