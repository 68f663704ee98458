#!/usr/bin/env python3
"""Evaluate the default DSP separator on a synthetic mix with known stems.

Usage:
    .tools/venv/bin/python models/gen/eval_synthetic.py [--model models/default.onnx]
                                                        [--params '{"centre_power": 4}']
                                                        [--seconds 12] [--seed 1] [--song FILE]

The synthetic song (44.1 kHz stereo) is the sum of four known stems:
  drums  : kick (pitch-swept sine + click), snare (noise + 190 Hz body), closed hi-hat
           (high-passed noise) on a 120 BPM grid, nearly centred
  bass   : a 55-98 Hz note line (sine + weak 2nd/3rd harmonics), centred
  vocals : a centre-panned 300-1000 Hz melody with 5.5 Hz vibrato and decaying harmonics
  other  : side-panned sustained chords (left-heavy and right-heavy voices)
Prints the per-stem SDR = 10 log10(|s|^2 / |s - s_hat|^2) of the model against the trivial
baseline (every stem = mix / 4) and a few sanity checks (stems sum to the mix; a pure
centred 1 kHz tone comes back as vocals; a pure 70 Hz tone comes back as bass). With
--params the model is rebuilt in memory by generate.build_default(params) (for tuning).
Exit status 1 when the model does not beat the baseline on every stem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
SR = 44100
SOURCES = ["drums", "bass", "other", "vocals"]


def _env(n, attack, release):
    """Linear attack/release envelope of length n samples (no clicks)."""
    e = np.ones(n)
    a = min(n, max(1, int(attack * SR)))
    r = min(n, max(1, int(release * SR)))
    e[:a] *= np.linspace(0, 1, a)
    e[n - r :] *= np.linspace(1, 0, r)
    return e


def _onepole_hp(x, fc):
    a = np.exp(-2 * np.pi * fc / SR)
    y = np.empty_like(x)
    prev_x = prev_y = 0.0
    for i, v in enumerate(x):
        prev_y = a * (prev_y + v - prev_x)
        prev_x = v
        y[i] = prev_y
    return y


def synth(seconds: float, seed: int):
    rng = np.random.default_rng(seed)
    T = int(seconds * SR)
    t = np.arange(T) / SR
    stems = {s: np.zeros((2, T)) for s in SOURCES}

    # ---- drums, 120 BPM: kick on every beat, snare on 2 and 4, hi-hat on 8ths
    beat = 0.5
    hat_proto = _onepole_hp(rng.standard_normal(int(0.06 * SR)), 6000.0)
    for i in range(int(seconds / (beat / 2))):
        t0 = int(i * beat / 2 * SR)
        if i % 2 == 0:  # kick
            n = min(int(0.3 * SR), T - t0)
            tt = np.arange(n) / SR
            f = 45 + 75 * np.exp(-tt / 0.03)
            ph = 2 * np.pi * np.cumsum(f) / SR
            k = np.sin(ph) * np.exp(-tt / 0.09) + 0.3 * rng.standard_normal(n) * np.exp(-tt / 0.004)
            stems["drums"][:, t0 : t0 + n] += 0.7 * k * np.array([[1.0], [0.97]])
        if i % 4 == 2:  # snare
            n = min(int(0.25 * SR), T - t0)
            tt = np.arange(n) / SR
            s = 0.5 * rng.standard_normal(n) * np.exp(-tt / 0.06) + 0.4 * np.sin(2 * np.pi * 190 * tt) * np.exp(-tt / 0.04)
            stems["drums"][:, t0 : t0 + n] += 0.5 * s * np.array([[0.95], [1.0]])
        n = min(len(hat_proto), T - t0)  # hi-hat
        tt = np.arange(n) / SR
        hgain = np.array([[0.8], [1.0]]) if i % 2 else np.array([[1.0], [0.8]])
        stems["drums"][:, t0 : t0 + n] += 0.25 * hat_proto[:n] * np.exp(-tt / 0.015) * hgain

    # ---- bass: 55-98 Hz note line, 8th/quarter notes
    bass_notes = [55.0, 65.41, 73.42, 82.41, 98.0, 73.42, 61.74, 82.41]
    pos, idx = 0, 0
    while pos < T:
        n = min(int(beat * SR * (1 if idx % 3 else 2)), T - pos)
        f = bass_notes[idx % len(bass_notes)]
        tt = np.arange(n) / SR
        note = np.sin(2 * np.pi * f * tt) + 0.25 * np.sin(2 * np.pi * 2 * f * tt) + 0.1 * np.sin(2 * np.pi * 3 * f * tt)
        stems["bass"][:, pos : pos + n] += 0.35 * note * _env(n, 0.01, 0.03) * np.exp(-tt / 1.5)
        pos += n
        idx += 1

    # ---- vocals: centred vibrato melody 300-1000 Hz
    mel = [392.0, 440.0, 523.25, 493.88, 440.0, 587.33, 659.25, 523.25, 349.23, 392.0]
    pos, idx = 0, 0
    while pos < T:
        n = min(int(SR * (0.75 if idx % 2 else 0.5)), T - pos)
        f0 = mel[idx % len(mel)]
        tt = np.arange(n) / SR
        finst = f0 * 2 ** ((30 / 1200) * np.sin(2 * np.pi * 5.5 * tt) * np.minimum(1, tt / 0.15))
        ph = 2 * np.pi * np.cumsum(finst) / SR
        v = sum((0.8**h) / h * np.sin(h * ph) for h in range(1, 7) if h * f0 < 12000)
        gap = int(0.05 * SR)  # short breath between notes
        env = _env(n, 0.03, 0.05)
        env[n - gap :] = 0.0
        stems["vocals"][:, pos : pos + n] += 0.3 * v * env
        pos += n
        idx += 1

    # ---- other: side-panned sustained chords
    chords = [[261.63, 329.63, 392.0], [220.0, 261.63, 329.63], [174.61, 220.0, 261.63], [196.0, 246.94, 293.66]]
    pos, idx = 0, 0
    while pos < T:
        n = min(int(2.0 * SR), T - pos)
        tt = np.arange(n) / SR
        for j, f in enumerate(chords[idx % len(chords)]):
            tone = sum((0.6**h) * np.sin(2 * np.pi * h * f * tt + j) for h in range(1, 5))
            pan = np.array([[1.0], [0.3]]) if j % 2 == 0 else np.array([[0.25], [1.0]])
            stems["other"][:, pos : pos + n] += 0.12 * tone * _env(n, 0.05, 0.1) * pan
        pos += n
        idx += 1

    mix = sum(stems.values())
    return mix.astype(np.float32), {k: v.astype(np.float32) for k, v in stems.items()}


def sdr(ref, est):
    ref = ref.astype(np.float64)
    est = est.astype(np.float64)
    return 10 * np.log10(np.sum(ref**2) / max(np.sum((ref - est) ** 2), 1e-20))


def session(model_bytes_or_path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes_or_path, so, providers=["CPUExecutionProvider"])


def load_song(path: str) -> np.ndarray:
    """Stereo float32 [2, T] at 44.1 kHz from .npy, 16-bit PCM .wav, or (if the optional
    `miniaudio` package is installed) .mp3 and other compressed formats."""
    if path.endswith(".npy"):
        x = np.load(path).astype(np.float32)
    elif path.endswith(".wav"):
        import wave

        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2 or w.getframerate() != SR:
                raise SystemExit("only 16-bit 44.1 kHz WAV is supported")
            x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, w.getnchannels()).T / 32768.0
    else:
        try:
            import miniaudio
        except ImportError:
            raise SystemExit("decoding compressed audio needs `pip install miniaudio` (not in requirements.txt)")
        d = miniaudio.decode_file(path, output_format=miniaudio.SampleFormat.FLOAT32, nchannels=2, sample_rate=SR)
        x = np.frombuffer(d.samples, dtype=np.float32).reshape(-1, 2).T
    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] == 1:
        x = np.concatenate([x, x])
    return np.ascontiguousarray(x[:2])


def song_report(sess, path: str) -> None:
    """No ground truth for a real song: report stem energies, spectral centroids, L/R correlation."""
    x = load_song(path)
    t0 = time.perf_counter()
    y = sess.run(None, {"mix": x[None]})[0][0]
    dt = time.perf_counter() - t0
    print(f"song {path}: {x.shape[1]} samples ({x.shape[1] / SR:.1f} s) in one run: {dt * 1000:.0f} ms (1 thread), "
          f"max |sum(stems) - mix| = {np.abs(y.sum(0) - x).max():.2e}")
    tot = float(np.sum(x.astype(np.float64) ** 2))
    freqs = np.fft.rfftfreq(x.shape[1], 1 / SR)
    print(f"{'stem':8s} {'energy/mix':>10s} {'centroid':>9s} {'L/R corr':>8s}")
    for i, s in enumerate(SOURCES):
        e = float(np.sum(y[i].astype(np.float64) ** 2))
        spec = np.abs(np.fft.rfft(y[i].mean(0))) ** 2
        centroid = float(np.sum(freqs * spec) / max(np.sum(spec), 1e-20))
        corr = float(np.corrcoef(y[i][0], y[i][1])[0, 1]) if e > 0 else float("nan")
        print(f"{s:8s} {e / tot * 100:9.1f}% {centroid:7.0f} Hz {corr:8.2f}")
    print()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(HERE, "..", "default.onnx"))
    ap.add_argument("--params", default=None, help="JSON dict: rebuild the default model with these overrides")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--song", default=None, help="also report on a real song (.npy [2,T], 16-bit .wav, or .mp3 with miniaudio)")
    args = ap.parse_args(argv)

    if args.params is not None:
        sys.path.insert(0, HERE)
        import generate  # noqa: E402

        sess = session(generate.build_default(json.loads(args.params)).SerializeToString())
        print(f"model: generate.build_default({args.params})")
    else:
        sess = session(args.model)
        print(f"model: {os.path.normpath(args.model)}")

    if args.song:
        song_report(sess, args.song)
    mix, ref = synth(args.seconds, args.seed)
    t0 = time.perf_counter()
    out = sess.run(None, {"mix": mix[None]})[0][0]
    dt = time.perf_counter() - t0
    est = {s: out[i] for i, s in enumerate(SOURCES)}
    print(f"synthetic mix: {mix.shape[1]} samples ({mix.shape[1] / SR:.1f} s), separated in {dt * 1000:.0f} ms (1 thread)")
    print(f"max |sum(stems) - mix| = {np.abs(out.sum(0) - mix).max():.2e}")
    print()
    print(f"{'stem':8s} {'model SDR':>10s} {'mix/4 SDR':>10s} {'gain':>7s}")
    ok = True
    rows = []
    for s in SOURCES:
        m, b = sdr(ref[s], est[s]), sdr(ref[s], mix / 4)
        rows.append((s, m, b))
        ok &= m > b
        print(f"{s:8s} {m:10.2f} {b:10.2f} {m - b:+7.2f}")
    print(f"{'mean':8s} {np.mean([r[1] for r in rows]):10.2f} {np.mean([r[2] for r in rows]):10.2f}")

    # sanity: pure tones land in the right stem
    tt = np.arange(SR * 2) / SR
    for f, stem in ((1000.0, "vocals"), (70.0, "bass")):
        x = (0.3 * np.sin(2 * np.pi * f * tt)).astype(np.float32)
        x2 = np.stack([x, x])[None]
        y = sess.run(None, {"mix": x2})[0][0]
        i = SOURCES.index(stem)
        core = slice(SR // 2, -SR // 2)
        print(f"centred {f:g} Hz tone -> {stem}: SDR {sdr(x2[0][:, core], y[i][:, core]):.1f} dB")
    print()
    print("PASS: beats mix/4 on every stem" if ok else "FAIL: does not beat mix/4 on every stem")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
