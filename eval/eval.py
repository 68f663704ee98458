#!/usr/bin/env python3
"""Separation quality of the running system, against ground truth made here.

Usage (``make eval`` does the set-up and the build, then runs scripts/eval.sh):
    scripts/eval.sh [--model PATH] [--sets synthetic,midi] [--separators 2] [--keep DIR]
    .tools/venv/bin/python eval/eval.py ...   (after `eval "$(scripts/setup.sh)"` and a release build)

For every song of each set (see eval/songs.py) it:
1. starts the real system, ``target/release/dme up``, on a free HTTP port with a temporary
   DME_DATA_DIR (and its own nats-server, with a temporary copy of nats.conf whose monitoring
   port is free too), with the default embedded model or ``--model``;
2. uploads the mix as a float WAV, waits for progress 100 and downloads every stem with
   ``?format=wav32f`` (float, so nothing is lost on the way);
3. computes SDR = 10·log10(‖s‖² / ‖s − ŝ‖²) per stem over the whole song, both channels
   together (the MDX challenge's measure), for the system's stems, for the trivial baseline
   (every stem = mix/4), and for the ideal ratio mask (the oracle; see `ideal_ratio_mask`).

It prints a table per set and writes eval/results.md and eval/results.json.
Exit status 1 when, on the synthetic set, the model's SDR averaged over the songs does not beat
the baseline's on every stem. The MIDI set is reported, never gated: the default model is a
DSP heuristic, and rendered instruments break some of its assumptions (see results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import songs  # noqa: E402
from songs import SOURCES, SR  # noqa: E402

# MDX 2021 adds this to numerator and denominator so that silent references stay finite.
SDR_DELTA = 1e-7
# The oracle's STFT: the same frame as the default model's (93 ms), 75 % overlap.
IRM_NFFT = 4096
IRM_HOP = 1024
# How long one song may take through the system (a 30 s song takes a few seconds with the
# default model on 2 cores; a big neural model takes much longer).
SONG_TIMEOUT_S = 900
START_TIMEOUT_S = 600  # a big model file is optimised by ONNX Runtime at its first load


# ---------------------------------------------------------------------------------------------
# Measures


def sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """MDX SDR in dB over the whole song, all channels together."""
    ref = ref.astype(np.float64)
    est = est.astype(np.float64)
    num = SDR_DELTA + np.sum(ref**2)
    den = SDR_DELTA + np.sum((ref - est) ** 2)
    return float(10 * np.log10(num / den))


def _stft(x: np.ndarray) -> np.ndarray:
    """[T] -> [frames, bins] with a periodic Hann window; zero-padded so every sample is in
    four frames (see `_istft`)."""
    w = np.hanning(IRM_NFFT + 1)[:-1]
    pad = IRM_NFFT - IRM_HOP
    x = np.pad(x, (pad, pad + (-len(x)) % IRM_HOP))
    n = 1 + (len(x) - IRM_NFFT) // IRM_HOP
    idx = np.arange(IRM_NFFT)[None, :] + IRM_HOP * np.arange(n)[:, None]
    return np.fft.rfft(x[idx] * w, axis=1)


def _istft(z: np.ndarray, length: int) -> np.ndarray:
    """Weighted overlap-add inverse of `_stft` (exact: Σ w² = 1.5 at 75 % overlap)."""
    w = np.hanning(IRM_NFFT + 1)[:-1]
    frames = np.fft.irfft(z, IRM_NFFT, axis=1) * w
    n = frames.shape[0]
    out = np.zeros(IRM_HOP * (n - 1) + IRM_NFFT)
    for k in range(IRM_NFFT // IRM_HOP):  # 4 interleaved, non-overlapping frame sets
        part = frames[k::4].reshape(-1)
        start = k * IRM_HOP
        out[start : start + len(part)] += part
    norm = np.sum(w**2) / IRM_HOP  # 1.5
    pad = IRM_NFFT - IRM_HOP
    return out[pad : pad + length] / norm


def ideal_ratio_mask(mix: np.ndarray, stems: dict) -> dict:
    """The oracle: per channel, STFT of every true stem; mask_i = |S_i|² / Σ_j |S_j|² (the
    power, "Wiener-like" ratio mask, IRM with exponent 2); each mask multiplies the mix's
    STFT and the result is inverted. An upper bound for any method that masks this STFT."""
    out = {s: np.zeros_like(mix) for s in SOURCES}
    for c in range(mix.shape[0]):
        spec = {s: _stft(stems[s][c]) for s in SOURCES}
        power = {s: np.abs(z) ** 2 for s, z in spec.items()}
        total = sum(power.values()) + 1e-20
        x = _stft(mix[c])
        for s in SOURCES:
            out[s][c] = _istft(x * (power[s] / total), mix.shape[1])
    return out


def routing(truth: dict, est: dict) -> dict:
    """Where each true stem went: {true j: {output i: <ŝ_i, s_j> / ‖s_j‖²}}. The outputs sum to
    the mix, so for nearly uncorrelated true stems each row sums to about 1: the share of that
    stem that each output carries."""
    out = {}
    for j in SOURCES:
        ref = truth[j].astype(np.float64)
        e = float(np.sum(ref**2)) or 1.0
        out[j] = {i: float(np.sum(est[i].astype(np.float64) * ref)) / e for i in SOURCES}
    return out


def lr_correlation(x: np.ndarray) -> float:
    """Left/right correlation of a stereo stem: 1 for a centred mono source."""
    if np.std(x[0]) == 0 or np.std(x[1]) == 0:
        return float("nan")
    return float(np.corrcoef(x[0], x[1])[0, 1])


# ---------------------------------------------------------------------------------------------
# The system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: bytes | None = None, ctype: str | None = None, timeout=120):
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("content-type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def get_json(url: str):
    status, body = http("GET", url, timeout=30)
    if status != 200:
        raise RuntimeError(f"GET {url}: {status} {body[:300]!r}")
    return json.loads(body)


class System:
    """`dme up` as a child process in its own process group, stopped with SIGTERM."""

    def __init__(self, binary: str, model: str | None, separators: int, workdir: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        conf = open(os.path.join(ROOT, "nats.conf")).read()
        # A free monitoring port, so this run never collides with another nats-server.
        conf, n = re.subn(r"(?m)^http_port:.*$", f"http_port: {free_port()}", conf)
        if n != 1:
            raise RuntimeError("nats.conf has no http_port line to replace")
        conf_path = os.path.join(workdir, "nats.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        env = dict(os.environ)
        env.update(
            DME_HTTP_ADDR=f"127.0.0.1:{self.port}",
            DME_DATA_DIR=os.path.join(workdir, "data"),
            DME_NATS_CONF=conf_path,
            DME_NATS_PORT=str(free_port()),
            DME_SEPARATORS=str(separators),
            DME_LOG=os.environ.get("DME_LOG", "warn"),
        )
        env.pop("DME_NATS_URL", None)
        if model:
            env["DME_MODEL"] = os.path.abspath(model)
        else:
            env.pop("DME_MODEL", None)
        if not env.get("DME_NATS_SERVER"):
            raise SystemExit("DME_NATS_SERVER is not set: run `eval \"$(scripts/setup.sh)\"` first (make eval does)")
        self.log_path = os.path.join(workdir, "dme-up.log")
        self.log = open(self.log_path, "w")
        self.cmd = [binary, "up"]
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.model = self._wait_ready()

    def _log_tail(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-30:])

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dme up exited with {self.proc.returncode}:\n{self._log_tail()}")
            try:
                health = get_json(self.base + "/healthz")
                if health.get("model"):
                    return health["model"]
            except (OSError, RuntimeError, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"dme up was not ready within {START_TIMEOUT_S} s:\n{self._log_tail()}")

    def separate(self, name: str, wav: bytes) -> tuple[dict, float]:
        """Uploads a WAV, waits for progress 100, returns ({stem: [2, T]}, seconds taken)."""
        t0 = time.monotonic()
        status, body = http("POST", f"{self.base}/music?name={urllib.parse.quote(name)}.wav", wav,
                            "application/octet-stream", timeout=300)
        if status != 200:
            raise RuntimeError(f"upload of {name}: {status} {body[:300]!r}")
        music_id = json.loads(body)["music_id"]
        deadline = t0 + SONG_TIMEOUT_S
        while True:
            p = get_json(f"{self.base}/music/{music_id}")
            if p.get("state") == "failed":
                raise RuntimeError(f"{name} failed: {p.get('error')}")
            if p.get("progress") == 100 and p.get("instruments"):
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{name}: not separated (last state {p}):\n{self._log_tail()}")
            time.sleep(0.2)
        took = time.monotonic() - t0
        out = {}
        for inst in p["instruments"]:
            url = urllib.parse.urljoin(self.base + "/", inst["track"]) + "?format=wav32f"
            status, data = http("GET", url, timeout=300)
            if status != 200:
                raise RuntimeError(f"GET {url}: {status}")
            audio, rate = songs.read_wav(data)
            if rate != SR:
                raise RuntimeError(f"{url}: {rate} Hz")
            out[inst["name"]] = audio
        return out, took

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# Report


def _fmt(x: float) -> str:
    return f"{x:.2f}".replace("-", "−")


def set_table(rows: list[dict]) -> tuple[list[str], dict]:
    """Markdown lines of one set's summary table, and its numbers (means over the songs)."""
    summary = {}
    for s in SOURCES:
        summary[s] = {k: float(np.mean([r["sdr"][s][k] for r in rows])) for k in ("model", "baseline", "oracle")}
    summary["mean"] = {k: float(np.mean([summary[s][k] for s in SOURCES])) for k in ("model", "baseline", "oracle")}
    lines = ["| stem | model SDR (dB) | mix/4 SDR (dB) | gain over mix/4 (dB) | oracle IRM SDR (dB) |",
             "|---|---:|---:|---:|---:|"]
    for s in SOURCES + ["mean"]:
        v = summary[s]
        name = f"**{s}**" if s == "mean" else s
        lines.append(f"| {name} | {_fmt(v['model'])} | {_fmt(v['baseline'])} | "
                     f"{'+' if v['model'] >= v['baseline'] else ''}{_fmt(v['model'] - v['baseline'])} | {_fmt(v['oracle'])} |")
    return lines, summary


def song_table(rows: list[dict]) -> list[str]:
    head = "| song | length (s) | time (s) | " + " | ".join(f"{s} model / mix/4 / IRM" for s in SOURCES) + " |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(SOURCES)]
    for r in rows:
        cells = " | ".join(f"{_fmt(r['sdr'][s]['model'])} / {_fmt(r['sdr'][s]['baseline'])} / {_fmt(r['sdr'][s]['oracle'])}" for s in SOURCES)
        lines.append(f"| {r['song']} | {r['seconds']:.1f} | {r['separate_s']:.1f} | {cells} |")
    return lines


def routing_table(rows: list[dict]) -> list[str]:
    lines = ["| true stem | L/R corr. | → drums | → bass | → other | → vocals |", "|---|---:|---:|---:|---:|---:|"]
    for j in SOURCES:
        share = {i: np.mean([r["routing"][j][i] for r in rows]) for i in SOURCES}
        corr = np.mean([r["lr_correlation"][j] for r in rows])
        lines.append(f"| {j} | {corr:.2f} | " + " | ".join(f"{100 * share[i]:.0f} %" for i in SOURCES) + " |")
    return lines


def below_baseline_notes(rows: list[dict]) -> list[str]:
    """One line per song and stem where the model does not beat mix/4, with where that stem went."""
    notes = []
    for r in rows:
        for s in SOURCES:
            v = r["sdr"][s]
            if v["model"] <= v["baseline"]:
                went = ", ".join(f"{100 * r['routing'][s][i]:.0f} % to {i}" for i in SOURCES)
                notes.append(f"- {r['song']} / {s}: model {_fmt(v['model'])} dB ≤ mix/4 {_fmt(v['baseline'])} dB. "
                             f"The true {s} (L/R correlation {r['lr_correlation'][s]:.2f}) went {went}.")
    return notes


def git_describe() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="ONNX model for the separators (default: the embedded default model)")
    ap.add_argument("--sets", default="synthetic,midi", help="comma-separated: synthetic, midi")
    ap.add_argument("--separators", type=int, default=2)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "dme"))
    ap.add_argument("--out", default=HERE, help="folder for results.md and results.json")
    ap.add_argument("--keep", default=None, help="also write every mix, true stem and system stem as WAV here")
    args = ap.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    for s in sets:
        if s not in ("synthetic", "midi"):
            raise SystemExit(f"unknown set {s!r}")
    if "midi" in sets and (missing := songs.midi_available()):
        raise SystemExit(f"the MIDI set needs {missing}; or pass --sets synthetic")
    if not os.access(args.binary, os.X_OK):
        raise SystemExit(f"{args.binary} is missing: cargo build --release --bin dme")
    command = " ".join(["scripts/eval.sh"] + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
    if os.environ.get("DME_EVAL_VIA_MAKE"):
        command = f"make eval (= {command})"
    print(f"command: {command}")
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)

    results = {"command": command, "commit": git_describe(), "sets": {}}
    with tempfile.TemporaryDirectory(prefix="dme-eval-") as work:
        system = System(args.binary, args.model, args.separators, work)
        try:
            model = system.model
            print(f"system: {' '.join(system.cmd)} at {system.base}, {args.separators} separators, model "
                  f"{model.get('name')} (sources {','.join(model.get('sources', []))}, segment {model.get('segment')}, "
                  f"{'fixed' if model.get('fixed') else 'dynamic'} length)")
            results["model"] = model
            if "midi" in sets:
                results["fluidsynth"] = songs.fluidsynth_version()
            for set_name in sets:
                gen = songs.synthetic_set() if set_name == "synthetic" else songs.midi_set()
                rows = []
                for name, mix, truth in gen:
                    path = os.path.join(work, name + ".wav")
                    songs.write_wav_f32(path, mix)
                    with open(path, "rb") as f:
                        wav = f.read()
                    # The system gets the float32 file; measure against what it got.
                    mix32 = songs.read_wav(wav)[0]
                    est, took = system.separate(name, wav)
                    missing = [s for s in SOURCES if s not in est]
                    if missing:
                        raise RuntimeError(f"the model has no stem {missing}; it has {sorted(est)}")
                    for s in SOURCES:
                        if est[s].shape != mix.shape:
                            raise RuntimeError(f"{name} {s}: shape {est[s].shape}, expected {mix.shape}")
                    oracle = ideal_ratio_mask(mix32, truth)
                    row = {"song": name, "seconds": mix.shape[1] / SR, "separate_s": took,
                           "routing": routing(truth, est), "lr_correlation": {s: lr_correlation(truth[s]) for s in SOURCES},
                           "sum_error": float(np.max(np.abs(sum(est[s] for s in SOURCES) - mix32))),
                           "sdr": {s: {"model": sdr(truth[s], est[s]), "baseline": sdr(truth[s], mix32 / 4),
                                       "oracle": sdr(truth[s], oracle[s])} for s in SOURCES}}
                    rows.append(row)
                    print(f"  {set_name}/{name}: {row['seconds']:.1f} s separated in {took:.1f} s; " +
                          ", ".join(f"{s} {row['sdr'][s]['model']:.2f}" for s in SOURCES))
                    if args.keep:
                        for s in SOURCES:
                            songs.write_wav_f32(os.path.join(args.keep, f"{name}-{s}-true.wav"), truth[s])
                            songs.write_wav_f32(os.path.join(args.keep, f"{name}-{s}-model.wav"), est[s])
                        songs.write_wav_f32(os.path.join(args.keep, f"{name}-mix.wav"), mix)
                lines, summary = set_table(rows)
                results["sets"][set_name] = {"songs": rows, "mean": summary}
                print(f"\n{set_name} set ({len(rows)} songs), SDR averaged over the songs:")
                print("\n".join(lines) + "\n")
        finally:
            system.stop()

    ok = True
    failed = []
    if "synthetic" in results["sets"]:
        m = results["sets"]["synthetic"]["mean"]
        failed = [s for s in SOURCES if not m[s]["model"] > m[s]["baseline"]]
        ok = not failed
    results["pass"] = ok
    results["failed_stems"] = failed
    write_reports(args.out, results)
    print(f"wrote {os.path.relpath(os.path.join(args.out, 'results.md'), ROOT)} and results.json")
    if "synthetic" not in results["sets"]:
        print("no synthetic set: nothing gated")
    elif ok:
        print("PASS: on the synthetic set the model beats mix/4 on every stem")
    else:
        print(f"FAIL: on the synthetic set the model does not beat mix/4 on {', '.join(failed)}")
    return 0 if ok else 1


def write_reports(out: str, results: dict) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    model = results.get("model", {})
    md = ["# Separation quality (`make eval`)", "",
          f"Produced by `{results['command']}` at commit {results['commit']}. Model: **{model.get('name')}** "
          f"(fingerprint `{model.get('fingerprint')}`), run through the whole system (`dme up`, upload, "
          "separation, download of each stem as `?format=wav32f`).", ""]
    for set_name, data in results["sets"].items():
        lines, _ = set_table(data["songs"])
        title = {"synthetic": "Synthetic set", "midi": "MIDI set (fluidsynth, FluidR3 GM)"}[set_name]
        md += [f"## {title}", "", f"SDR averaged over {len(data['songs'])} songs:", ""] + lines + ["",
               "Per song (model / mix/4 / oracle IRM, dB); *time* is upload to progress 100:", ""] + song_table(data["songs"]) + [""]
        md += ["Where each true stem went (share of it in each output, ⟨ŝ_i, s_j⟩/‖s_j‖², mean over the songs; "
               "L/R corr. is the true stem's left/right correlation, 1 for a centred mono source):", ""] + routing_table(data["songs"]) + [""]
        notes = below_baseline_notes(data["songs"])
        md += (["Songs and stems where the model does not beat mix/4:", ""] + notes if notes
               else ["The model beats mix/4 on every stem of every song of this set."]) + [""]
    gate = ("PASS: the model beats mix/4 on every stem of the synthetic set." if results["pass"]
            else f"FAIL: the model does not beat mix/4 on {', '.join(results['failed_stems'])} (synthetic set).")
    if "synthetic" not in results["sets"]:
        gate = "No synthetic set in this run: nothing gated."
    md += ["## Result", "", gate, "",
           "## How it is measured", "",
           "- **SDR** = 10·log10(‖s‖² / ‖s − ŝ‖²) over the whole song, both channels together, per stem "
           f"(the MDX challenge's measure, with δ = {SDR_DELTA:g} added above and below). A set's number is the "
           "mean over its songs; *mean* is the mean over the four stems.",
           "- **mix/4**: every stem estimated as a quarter of the mix (the trivial baseline).",
           f"- **oracle IRM**: the ideal ratio mask with exponent 2 (power ratio, Wiener-like): per channel, "
           f"STFT (n_fft {IRM_NFFT}, hop {IRM_HOP}, periodic Hann), mask_i = |S_i|² / Σ_j |S_j|² from the true "
           "stems, applied to the mix's STFT, inverse STFT. It uses the answer, so it is an upper bound for "
           "masking methods with this frame, not a competitor.",
           "- **Gate**: `make eval` exits 1 when, on the synthetic set, the model's mean SDR is not above "
           "mix/4's on every stem. The MIDI set is reported only.",
           "", "## The songs", "",
           "Both sets are made by `eval/songs.py` from fixed seeds; every stem is known exactly and the mix is "
           "their sum, scaled so that it peaks at 0.9.", "",
           "- **Synthetic** (" + ", ".join(f"{n}: seed {s}, {t:g} s" for n, s, t in songs.SYNTH_SONGS) + "): "
           "numpy-synthesised drums (swept-sine kick, noise+tone snare, closed/open hats, a wide crash), a plucked "
           "bass line on the chord roots (40–110 Hz), chords that are side-panned or wide (left and right "
           "detuned), and a centre-panned voice-like melody (harmonics shaped by vowel formants, delayed "
           "5–6 Hz vibrato, a breath at each onset). Tempo, key, patterns and panning come from the seed.",
           "- **MIDI** (" + ", ".join(s["name"] for s in songs.MIDI_SONGS) + f"; {results.get('fluidsynth', '')}): "
           "MIDI written by `eval/songs.py`, one file per stem, each rendered alone by fluidsynth with the "
           "FluidR3 GM soundfont (chorus off, reverb sends set per part), then summed. Drums on channel 10; bass "
           "programs 33/32/38 (finger, acoustic, synth bass 1); *other* is two parts panned apart (piano + "
           "strings, nylon guitar + electric piano, clean guitar + slow strings); *vocals* is a lead at pan "
           "centre: Voice Oohs, Choir Aahs, Alto Sax.", "",
           "## Reading the MIDI numbers", "",
           "The default model is a DSP heuristic (models/README.md): *vocals* = sustained, centred, 180 Hz–7 kHz; "
           "*bass* = sustained below 180 Hz; *drums* = transient or noisy; *other* = the rest. Rendered sampled "
           "instruments fit that less well than the synthetic set, which was written to the same description: "
           "a sample can be stereo by itself (see the L/R correlations), and piano, guitar and bass notes start "
           "with transients. The routing tables show where each stem went. The MIDI set is not gated, and the "
           "default model was not tuned for it: where a stem is below mix/4 it is listed as it is.", ""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
