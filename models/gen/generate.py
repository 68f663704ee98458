#!/usr/bin/env python3
"""Generate the ONNX models of dme (the default DSP separator and the test models).

Usage:
    .tools/venv/bin/python models/gen/generate.py [--out DIR]

Writes DIR/default.onnx and DIR/test/*.onnx (DIR defaults to the `models/` folder next
to this script's folder). The output is byte-for-byte deterministic: every constant is
computed with Python's `math` module or exact integer arithmetic (no numpy SIMD
transcendental functions, no random generators whose streams could change between
releases), node and tensor names come from counters, and no timestamps or versions of the
generating tools are written into the files.

Model contract (see models/README.md):
    input  `mix`   float32 [1, 2, T]     stereo, 44.1 kHz
    output `stems` float32 [1, S, 2, T]
    metadata_props: sources, sample_rate, name, (segment_samples for dynamic-T models)
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # default domain; STFT/DFT (17) and Col2Im (18) are available
IR_VERSION = 10  # onnx 1.23 would write IR 14; ONNX Runtime 1.31 accepts <= 13
SAMPLE_RATE = 44100
SOURCES4 = ["drums", "bass", "other", "vocals"]
SOURCES6 = ["drums", "bass", "other", "vocals", "guitar", "piano"]
INT64_MAX = 2**63 - 1


# --------------------------------------------------------------------------- helpers
class Graph:
    """Tiny deterministic graph builder: names come from a counter."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0
        self.const_cache: dict[tuple, str] = {}

    def _next(self) -> int:
        self.n += 1
        return self.n

    def const(self, value, dtype=np.float32, name: str | None = None) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = (name, arr.dtype.str, arr.shape, arr.tobytes())
        if key in self.const_cache:
            return self.const_cache[key]
        cname = name or f"{self.prefix}c{self._next():03d}"
        self.inits.append(numpy_helper.from_array(arr, cname))
        self.const_cache[key] = cname
        return cname

    def i64(self, value) -> str:
        return self.const(value, np.int64)

    def op(self, op_type: str, inputs, out: str | None = None, n_out: int = 1, **attrs):
        k = self._next()
        if out is not None:
            outs = [out]
        else:
            outs = [f"{self.prefix}{op_type.lower()}{k:03d}" + (f"_{j}" if n_out > 1 else "") for j in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"{self.prefix}n{k:03d}_{op_type}", **attrs))
        return outs[0] if n_out == 1 else outs


def finish_model(g: Graph, inputs, outputs, name: str, metadata: dict[str, str], doc: str) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, name, inputs, outputs, g.inits, doc_string=doc)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="dme-models-gen",
        producer_version="1",
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    for k in sorted(metadata):
        p = model.metadata_props.add()
        p.key = k
        p.value = str(metadata[k])
    onnx.checker.check_model(model, full_check=True)
    return model


def mix_input(t_dim):
    return helper.make_tensor_value_info("mix", TensorProto.FLOAT, [1, 2, t_dim])


def stems_output(n_sources: int, t_dim):
    return helper.make_tensor_value_info("stems", TensorProto.FLOAT, [1, n_sources, 2, t_dim])


class DetRand:
    """Deterministic pseudo-random numbers from a 64-bit LCG (exact integer arithmetic)."""

    def __init__(self, seed: int):
        self.s = (seed * 6364136223846793005 + 1442695040888963407) % 2**64

    def uniform(self) -> float:  # in [-1, 1)
        self.s = (self.s * 6364136223846793005 + 1442695040888963407) % 2**64
        return ((self.s >> 11) / 2.0**53) * 2.0 - 1.0


def fir_kernel(seed: int, k: int, gain: float = 0.5) -> list[float]:
    """A 'random-ish' two-sided FIR of length k (odd): decaying random taps plus a centre tap.

    Non-zero taps on both sides of the centre make the filter causal *and* anticausal, so a
    mis-aligned or badly padded segment changes the output near segment boundaries.
    """
    r = DetRand(seed)
    c = k // 2
    taps = []
    for i in range(k):
        d = abs(i - c)
        taps.append(r.uniform() * math.exp(-d / (k / 6.0)))
    taps[c] += 1.0 + 0.5 * r.uniform()
    # L2 norm = gain: white noise in, white-noise power * gain^2 out
    s = math.sqrt(sum(t * t for t in taps))
    return [gain * t / s for t in taps]


# --------------------------------------------------------------------------- default model
DEFAULT_PARAMS = dict(
    n_fft=4096,  # 93 ms frames: fine frequency resolution for bass and partials
    hop=1024,  # 75 % overlap; Hann^2 sums to exactly 1.5 at this overlap
    # pseudo-median filters: cascades of median-of-3 with these dilations (in frames / bins)
    harm_dilations=(1, 3, 6),  # along time, 21 frames (~0.49 s): rejects events up to ~6 frames (~140 ms)
    perc_dilations=(1, 3, 9, 27),  # along frequency, 81 bins (~870 Hz): rejects peaks up to ~27 bins wide
    mask_power=2.0,  # Wiener-like soft masks: H^2 / (H^2 + (beta*P)^2)
    beta_perc=1.0,  # margin: drums need P > beta_perc * H
    beta_harm=1.0,  # margin: harmonic needs H > beta_harm * P
    bass_cut_hz=180.0,  # bass = harmonic part below this (smooth Butterworth-like curve)
    bass_order=4,
    vocal_low_hz=180.0,  # vocals = harmonic part above this ...
    vocal_low_order=3,
    vocal_high_hz=7000.0,  # ... and below this
    vocal_high_order=2,
    centre_power=6.0,  # centre mask = coherence ** centre_power
    centre_smooth=1,  # frames averaged (numerator/denominator) for the L/R coherence (1 = none)
    # low-frequency transient residual (kick drums): relu(|X| - kappa * Hfwd), Hfwd = look-ahead
    # pseudo-median along time; (weight * residual)^2 is added to the percussive power below
    # resid_cut_hz (smooth low-pass weight). 0 disables.
    resid_kappa=1.0,
    resid_weight=2.0,
    resid_forward=(1, 3),  # look-ahead median-of-3 cascade over frames t..t+8; None = use H
    resid_cut_hz=150.0,
    eps=1e-10,
)


def _lowpass_curve(freqs, fc, order):
    return [1.0 / (1.0 + (f / fc) ** (2 * order)) for f in freqs]


def _highpass_curve(freqs, fc, order):
    return [((f / fc) ** (2 * order)) / (1.0 + (f / fc) ** (2 * order)) for f in freqs]


def periodic_hann(n: int) -> list[float]:
    return [0.5 - 0.5 * math.cos(2.0 * math.pi * i / n) for i in range(n)]


def _med3(g: Graph, x: str, axis: int, d: int, rank: int, forward: bool = False) -> str:
    """Median of 3 along `axis` with dilation d: med(x[i-d], x[i], x[i+d]), edge-replicated.

    forward=True: med(x[i], x[i+d], x[i+2d]) (looks ahead only)."""
    pads = [0] * (2 * rank)
    pads[axis] = 0 if forward else d
    pads[rank + axis] = 2 * d if forward else d
    xp = g.op("Pad", [x, g.i64(pads)], mode="edge")
    ax = g.i64([axis])
    a = g.op("Slice", [xp, g.i64([0]), g.i64([-2 * d]), ax])
    b = g.op("Slice", [xp, g.i64([d]), g.i64([-d]), ax])
    c = g.op("Slice", [xp, g.i64([2 * d]), g.i64([INT64_MAX]), ax])
    lo = g.op("Min", [a, b])
    hi = g.op("Max", [a, b])
    return g.op("Max", [lo, g.op("Min", [hi, c])])


def pseudo_median(g: Graph, x: str, axis: int, dilations, rank: int, forward: bool = False) -> str:
    """Cascade of dilated median-of-3 filters: a cheap, sort-free running-median approximation
    (dilations (1, 3) is Tukey's ninther over 9 samples)."""
    for d in dilations:
        x = _med3(g, x, axis, d, rank, forward)
    return x


def build_default(params: dict | None = None, name: str = "dme-hpss-dsp") -> onnx.ModelProto:
    p = dict(DEFAULT_PARAMS)
    if params:
        unknown = set(params) - set(p)
        if unknown:
            raise ValueError(f"unknown params {sorted(unknown)}")
        p.update(params)
    N, H = int(p["n_fft"]), int(p["hop"])
    assert N % H == 0 and N // H >= 2
    K = N // 2 + 1
    P = N - H  # left pad: every output sample is covered by N/H full frames
    eps = float(p["eps"])

    g = Graph("")
    win = periodic_hann(N)
    wss = sum(win[i] ** 2 for i in range(0, N, H))  # sum_k w^2(n - kH), constant (=1.5 for N/H=4)
    # check the constant-overlap-add property of w^2 exactly enough
    for n0 in range(0, H, max(1, H // 16)):
        s = sum(win[i] ** 2 for i in range(n0, N, H))
        assert abs(s - wss) < 1e-9, (s, wss)
    w_an = g.const(win, name="analysis_window")

    # ---- framing: [1,2,T] -> zero-padded [P+T+N, 2] read as ONE complex signal z = L + iR
    # (both channels share one complex FFT per frame).
    x2 = g.op("Reshape", ["mix", g.i64([2, -1])])
    xpad = g.op("Pad", [x2, g.i64([0, P, 0, N])], mode="constant")  # [2, P+T+N]
    sig = g.op("Unsqueeze", [g.op("Transpose", [xpad], perm=[1, 0]), g.i64([0])])  # [1, L, 2]
    Z = g.op("STFT", [sig, g.const(H, np.int64), w_an], onesided=0)  # [1, F, N, 2]
    Z = g.op("Squeeze", [Z, g.i64([0])])  # [F, N, 2]

    # ---- per-bin statistics from the packed spectrum. With Z[k] = a+ib and Z[N-k] = c+id:
    #   L[k] = (Z[k] + conj Z[N-k]) / 2,  R[k] = (Z[k] - conj Z[N-k]) / 2i
    #   |L|^2 + |R|^2 = (|Z[k]|^2 + |Z[N-k]|^2) / 2,   Re(L R*) = Im(Z[k] Z[N-k]) / 2 = (ad + bc) / 2
    zre, zim = g.op("Split", [Z, g.i64([1, 1])], n_out=2, axis=2)
    zre = g.op("Squeeze", [zre, g.i64([2])])  # [F, N]
    zim = g.op("Squeeze", [zim, g.i64([2])])
    f_ax = g.i64([1])

    def half(x):  # bins 0..N/2 -> [F, K]
        return g.op("Slice", [x, g.i64([0]), g.i64([K]), f_ax])

    def mirror(x):  # x[(N-k) mod N] for k = 0..N/2 -> [F, K]
        x0 = g.op("Slice", [x, g.i64([0]), g.i64([1]), f_ax])
        xr = g.op("Slice", [x, g.i64([N - 1]), g.i64([N // 2 - 1]), f_ax, g.i64([-1])])
        return g.op("Concat", [x0, xr], axis=1)

    a, b, c, d = half(zre), half(zim), mirror(zre), mirror(zim)
    pz = g.op("Add", [g.op("Mul", [zre, zre]), g.op("Mul", [zim, zim])])  # |Z|^2 [F, N]
    ptot = g.op("Mul", [g.op("Add", [half(pz), mirror(pz)]), g.const(0.5)])  # |L|^2+|R|^2
    cross = g.op("Mul", [g.op("Add", [g.op("Mul", [a, d]), g.op("Mul", [b, c])]), g.const(0.5)])  # Re(L R*)
    mag = g.op("Sqrt", [ptot])  # [F, K]

    # ---- HPSS with pseudo-median filters (cascaded median-of-3, see README)
    harm = pseudo_median(g, mag, 0, p["harm_dilations"], 2)  # smooth along time
    perc = pseudo_median(g, mag, 1, p["perc_dilations"], 2)  # smooth along frequency

    def pw(x, e):
        if e == 2.0:
            return g.op("Mul", [x, x])
        if e == 4.0:
            x2_ = g.op("Mul", [x, x])
            return g.op("Mul", [x2_, x2_])
        return g.op("Pow", [x, g.const(float(e))])

    hp = pw(harm, p["mask_power"])
    pp = pw(perc, p["mask_power"])
    if p["resid_kappa"] > 0:
        # transient residual: the part of the bin magnitude that the time-smoothed (harmonic)
        # estimate does not explain, e.g. narrow-band transients like a kick's low thump
        # (small P because narrow-band, small H because short). It counts as percussive.
        href = harm
        if p["resid_forward"]:
            href = pseudo_median(g, mag, 0, p["resid_forward"], 2, forward=True)
        res = g.op("Relu", [g.op("Sub", [mag, g.op("Mul", [href, g.const(float(p["resid_kappa"]))])])])
        rw = [float(p["resid_weight"]) * v for v in _lowpass_curve([k * SAMPLE_RATE / N for k in range(K)], p["resid_cut_hz"], 2)]
        pp = g.op("Add", [pp, g.op("Mul", [pw(res, p["mask_power"]), g.const(rw, name="resid_band")])])
    bh = float(p["beta_harm"]) ** p["mask_power"]
    bp = float(p["beta_perc"]) ** p["mask_power"]
    e = g.const(eps)
    # drums: P^2 / (P^2 + bp H^2), harmonic: H^2 / (H^2 + bh P^2)
    den_p = g.op("Add", [g.op("Add", [pp, g.op("Mul", [hp, g.const(bp)]) if bp != 1.0 else hp]), e])
    den_h = g.op("Add", [g.op("Add", [hp, g.op("Mul", [pp, g.const(bh)]) if bh != 1.0 else pp]), e])
    m_perc = g.op("Div", [pp, den_p])
    m_harm = g.op("Div", [hp, den_h])

    # ---- frequency curves
    freqs = [k * SAMPLE_RATE / N for k in range(K)]
    low = _lowpass_curve(freqs, p["bass_cut_hz"], p["bass_order"])
    vband = [
        a_ * b_
        for a_, b_ in zip(
            _highpass_curve(freqs, p["vocal_low_hz"], p["vocal_low_order"]),
            _lowpass_curve(freqs, p["vocal_high_hz"], p["vocal_high_order"]),
        )
    ]
    # bass + vocal bands never exceed 1, so the 'other' mask stays >= 0
    vband = [min(v, 1.0 - l) for v, l in zip(vband, low)]
    m_bass = g.op("Mul", [m_harm, g.const(low, name="bass_band")])

    # ---- centre (L/R coherence) mask: (max(0, 2 Re(L R*)) / (|L|^2 + |R|^2)) ** centre_power
    num, den = cross, ptot
    if int(p["centre_smooth"]) > 1:
        ks = int(p["centre_smooth"])

        def tsmooth(x):
            x4 = g.op("Unsqueeze", [x, g.i64([0, 1])])  # [1,1,F,K]
            y = g.op("AveragePool", [x4], kernel_shape=[ks, 1], pads=[ks // 2, 0, ks - 1 - ks // 2, 0], count_include_pad=0)
            return g.op("Squeeze", [y, g.i64([0, 1])])

        num, den = tsmooth(num), tsmooth(den)
    coh = g.op("Div", [g.op("Mul", [g.op("Relu", [num]), g.const(2.0)]), g.op("Add", [den, e])])
    coh = g.op("Min", [coh, g.const(1.0)])
    cp = float(p["centre_power"])
    if cp in (2.0, 4.0):
        centre = pw(coh, cp)
    elif cp == 6.0:
        c2 = g.op("Mul", [coh, coh])
        centre = g.op("Mul", [g.op("Mul", [c2, c2]), c2])
    elif cp == 8.0:
        c4 = pw(coh, 4.0)
        centre = g.op("Mul", [c4, c4])
    else:
        centre = g.op("Pow", [coh, g.const(cp)])
    m_voc = g.op("Mul", [g.op("Mul", [m_harm, g.const(vband, name="vocal_band")]), centre])

    # ---- masked packed spectra. A real mask applied to both channels, mirrored to bins N/2+1..N-1,
    # multiplies the packed spectrum Z directly: IDFT(M_full * Z) = stem_L + i stem_R.
    masks = g.op("Concat", [g.op("Unsqueeze", [m, g.i64([0])]) for m in (m_perc, m_bass, m_voc)], axis=0)  # [3,F,K]
    mrev = g.op("Slice", [masks, g.i64([N // 2 - 1]), g.i64([0]), g.i64([2]), g.i64([-1])])  # bins N/2-1..1
    mfull = g.op("Unsqueeze", [g.op("Concat", [masks, mrev], axis=2), g.i64([3])])  # [3, F, N, 1]
    mfull = g.op("Concat", [mfull, mfull], axis=3)  # [3, F, N, 2]
    Y = g.op("Mul", [mfull, g.op("Unsqueeze", [Z, g.i64([0])])])  # [3, F, N, 2]

    # ---- inverse STFT: complex IDFT, synthesis window, overlap-add, crop
    frames = g.op("DFT", [Y], inverse=1, onesided=0, axis=2)  # [3, F, N, 2]  (re = left, im = right)
    frames = g.op("Mul", [frames, g.const([[w, w] for w in [w / wss for w in win]], name="synthesis_window")])
    R = N // H
    shape_y = g.op("Shape", [Y])
    nF = g.op("Slice", [shape_y, g.i64([1]), g.i64([2]), g.i64([0])])  # [F]
    frames = g.op("Reshape", [frames, g.op("Concat", [g.i64([3]), nF, g.i64([R, H, 2])], axis=0)])  # [3,F,R,H,2]
    parts = g.op("Split", [frames, g.i64([1] * R)], n_out=R, axis=2)
    ola = None
    for j, part in enumerate(parts):
        part = g.op("Squeeze", [part, g.i64([2])])  # [3, F, H, 2]
        part = g.op("Pad", [part, g.i64([0, j, 0, 0, 0, R - 1 - j, 0, 0])], mode="constant")  # [3, F+R-1, H, 2]
        ola = part if ola is None else g.op("Add", [ola, part])
    ola = g.op("Reshape", [ola, g.i64([3, -1, 2])])  # [3, (F+R-1)H, 2]
    t_len = g.op("Slice", [g.op("Shape", ["mix"]), g.i64([2]), g.i64([3]), g.i64([0])])  # [T]
    ysep = g.op("Slice", [ola, g.i64([P]), g.op("Add", [t_len, g.i64([P])]), g.i64([1])])  # [3, T, 2]
    ysep = g.op("Transpose", [ysep], perm=[0, 2, 1])  # [3, 2, T]
    drums, bass, vocals = g.op("Split", [ysep, g.i64([1, 1, 1])], n_out=3, axis=0)  # [1,2,T]
    other = g.op("Sub", [g.op("Sub", [g.op("Sub", ["mix", drums]), bass]), vocals])
    out = g.op("Concat", [drums, bass, other, vocals], axis=0)  # [4,2,T]
    g.op("Unsqueeze", [out, g.i64([0])], out="stems")

    doc = (
        "dme default separator: DSP harmonic/percussive + band + centre-panning soft masks on an "
        f"STFT (n_fft {N}, hop {H}, periodic Hann), inverse STFT by overlap-add. "
        "drums = percussive, bass = harmonic below ~%d Hz, vocals = centre-panned harmonic mid band, "
        "other = mix - drums - bass - vocals (time domain, stems sum to the mix)." % int(p["bass_cut_hz"])
    )
    return finish_model(
        g,
        [mix_input("T")],
        [stems_output(4, "T")],
        "dme_default",
        {"sources": ",".join(SOURCES4), "segment_samples": "343980", "sample_rate": str(SAMPLE_RATE), "name": name},
        doc,
    )


# --------------------------------------------------------------------------- test models
def _conv_stems(g: Graph, n_src: int, kernel: int, seed: int, x: str = "mix") -> str:
    """Per-channel, per-stem FIR filters: grouped Conv over [1,2,T] -> [1,2*n_src,T]."""
    w = np.zeros((2 * n_src, 1, kernel), dtype=np.float32)
    for ch in range(2):
        for s in range(n_src):
            w[ch * n_src + s, 0, :] = fir_kernel(seed + 1000 * ch + 17 * s + 1, kernel)
    b = np.zeros((2 * n_src,), dtype=np.float32)
    y = g.op("Conv", [x, g.const(w), g.const(b)], group=2, kernel_shape=[kernel], pads=[kernel // 2, kernel // 2])
    return y  # channel index = ch * n_src + s


def _to_stems(g: Graph, y: str, n_src: int, out: str = "stems") -> str:
    """[1, 2*n_src, T] (ch-major) -> [1, n_src, 2, T]."""
    y = g.op("Reshape", [y, g.i64([1, 2, n_src, -1])])
    return g.op("Transpose", [y], out=out, perm=[0, 2, 1, 3])


def build_conv(t_dim, sources, seed: int, name: str, kernel: int = 129, segment: int | None = 44100) -> onnx.ModelProto:
    g = Graph("")
    y = _conv_stems(g, len(sources), kernel, seed)
    # Position-dependent gain (1 at the window's first sample, 1.5 at its end): like a real
    # network, the output depends on where a sample sits in the window, so a segment cut or
    # padded at the wrong place cannot go unnoticed in the lossless-distribution tests.
    t_f = g.op("Cast", [g.op("Gather", [g.op("Shape", ["mix"]), g.const(2, np.int64)], axis=0)], to=TensorProto.FLOAT)
    ramp = g.op("Range", [g.const(0.0), t_f, g.const(1.0)])
    ramp = g.op("Add", [g.op("Mul", [g.op("Div", [ramp, t_f]), g.const(0.5)]), g.const(1.0)])
    y = g.op("Mul", [y, ramp])
    _to_stems(g, y, len(sources))
    md = {"sources": ",".join(sources), "sample_rate": str(SAMPLE_RATE), "name": name}
    if segment is not None:
        md["segment_samples"] = str(segment)
    doc = f"dme test model: each stem is a different two-sided FIR (kernel {kernel}, 'same' zero padding) of the mix, times a gain rising from 1 to 1.5 across the window."
    return finish_model(g, [mix_input(t_dim)], [stems_output(len(sources), t_dim)], name, md, doc)


def build_sum(name: str = "sum_dynamic", seed: int = 400, kernel: int = 129) -> onnx.ModelProto:
    g = Graph("")
    n = len(SOURCES4)
    y = _conv_stems(g, n - 1, kernel, seed)
    first = _to_stems(g, y, n - 1, out="first_stems")  # [1, 3, 2, T]
    rest = g.op("Sub", ["mix", g.op("ReduceSum", [first, g.i64([1])], keepdims=0)])  # [1, 2, T]
    g.op("Concat", [first, g.op("Unsqueeze", [rest, g.i64([1])])], out="stems", axis=1)
    md = {"sources": ",".join(SOURCES4), "sample_rate": str(SAMPLE_RATE), "name": name, "segment_samples": "44100"}
    doc = "dme test model: stems 0..2 are FIRs of the mix, the last stem is mix minus their sum (stems sum to the mix)."
    return finish_model(g, [mix_input("T")], [stems_output(n, "T")], name, md, doc)


def build_slow(name: str = "slow_dynamic", seed: int = 500, layers: int = 5, kernel: int = 129, width: int = 16) -> onnx.ModelProto:
    """Like conv_dynamic, but with a stack of dense `width`-channel convolutions to be slow."""
    g = Graph("")
    n = len(SOURCES4)
    # expand: [1,2,T] -> [1,width,T] (grouped per input channel)
    half = width // 2
    w0 = np.zeros((width, 1, kernel), dtype=np.float32)
    for o in range(width):
        w0[o, 0, :] = fir_kernel(seed + o, kernel, gain=1.0)
    y = g.op("Conv", ["mix", g.const(w0)], group=2, kernel_shape=[kernel], pads=[kernel // 2, kernel // 2])
    for layer in range(layers):
        w = np.zeros((width, width, kernel), dtype=np.float32)
        for o in range(width):
            for i in range(width):
                # keep channel groups (L: 0..half-1, R: half..) mostly separate, bounded gain
                same_side = (o < half) == (i < half)
                taps = fir_kernel(seed + 100 * (layer + 1) + 7 * o + i, kernel, gain=1.0)
                scale = (0.9 if i == o else 0.1 / (half - 1)) if same_side else 0.0
                w[o, i, :] = [t * scale for t in taps]
        y = g.op("Conv", [y, g.const(w)], kernel_shape=[kernel], pads=[kernel // 2, kernel // 2])
    # project: width -> 2*n (ch-major), 1x1
    wp = np.zeros((2 * n, width, 1), dtype=np.float32)
    for ch in range(2):
        for s in range(n):
            o = ch * n + s
            wp[o, ch * half + (s % half), 0] = 0.5
    y = g.op("Conv", [y, g.const(wp)], kernel_shape=[1])
    _to_stems(g, y, n)
    md = {"sources": ",".join(SOURCES4), "sample_rate": str(SAMPLE_RATE), "name": name, "segment_samples": "44100"}
    doc = f"dme test model: deliberately slow ({layers} stacked {width}x{width} convolutions, kernel {kernel}); output is a filtered mix."
    return finish_model(g, [mix_input("T")], [stems_output(n, "T")], name, md, doc)


def build_poison(name: str = "poison_dynamic", seed: int = 600, kernel: int = 129) -> onnx.ModelProto:
    """Like conv_dynamic, but every output sample is NaN when any input sample exceeds 1.5 in
    magnitude: a model that fails on one segment of a song and works on the others."""
    g = Graph("")
    y = _conv_stems(g, len(SOURCES4), kernel, seed)
    peak = g.op("ReduceMax", [g.op("Abs", ["mix"])], keepdims=0)
    # log(1.5 - peak) is NaN past 1.5; 0 * NaN = NaN, 0 * finite = 0.
    poison = g.op("Mul", [g.op("Log", [g.op("Sub", [g.const(1.5), peak])]), g.const(0.0)])
    y = g.op("Add", [y, poison])
    _to_stems(g, y, len(SOURCES4))
    md = {"sources": ",".join(SOURCES4), "sample_rate": str(SAMPLE_RATE), "name": name, "segment_samples": "44100"}
    doc = "dme test model: FIRs of the mix, all NaN when the window holds a sample above 1.5 (a poison segment)."
    return finish_model(g, [mix_input("T")], [stems_output(len(SOURCES4), "T")], name, md, doc)


def build_bad_contract(name: str = "bad_contract") -> onnx.ModelProto:
    g = Graph("")
    sq = g.op("Squeeze", ["audio", g.i64([1])])  # [1, T]
    g.op("Mul", [sq, g.const(0.5)], out="output")
    md = {"sources": ",".join(SOURCES4), "sample_rate": str(SAMPLE_RATE), "name": name, "segment_samples": "44100"}
    doc = "dme test model with the WRONG contract: input `audio` [1,1,T], output `output` [1,T]."
    return finish_model(
        g,
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, [1, 1, "T"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, "T"])],
        name,
        md,
        doc,
    )


def all_models() -> dict[str, onnx.ModelProto]:
    return {
        "default.onnx": build_default(),
        "test/conv_fixed.onnx": build_conv(44100, SOURCES4, 100, "conv_fixed", segment=None),
        "test/conv_dynamic.onnx": build_conv("T", SOURCES4, 200, "conv_dynamic"),
        "test/conv_six.onnx": build_conv("T", SOURCES6, 300, "conv_six"),
        "test/sum_dynamic.onnx": build_sum(),
        "test/slow_dynamic.onnx": build_slow(),
        "test/bad_contract.onnx": build_bad_contract(),
        "test/poison_dynamic.onnx": build_poison(),
    }


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..")), help="output folder (default: models/)")
    args = ap.parse_args(argv)
    for rel, model in all_models().items():
        path = os.path.join(args.out, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = model.SerializeToString(deterministic=True)
        with open(path, "wb") as f:
            f.write(data)
        print(f"{path}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
