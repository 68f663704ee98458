#!/usr/bin/env python3
"""Times the two HT-Demucs exports of scripts/export_htdemucs.py against each other.

Usage:
    python3 scripts/bench_export.py [--runs 9] [--threads 1,2] [--seed 0]
    make bench-export

The convolution export (--spectral conv, models/htdemucs-random.onnx) and the ONNX STFT/DFT
export (--spectral onnx, models/htdemucs-random-dft.onnx) of the same seeded weights, each
exported first when missing. Both are loaded in onnxruntime 1.31.1 as dme's separators load a
model (CPU, graph optimisation level ALL, CPU memory arena off), with 1 and then 2 intra-op
threads. Per thread count: one warm-up run of each, then `--runs` runs of each, alternating
the two models, on the same seeded noise segment (343980 samples); the figure is the median.
Also the largest difference of their stems (export_htdemucs.compare), file sizes and node
counts. Prints the figures and writes bench/results/export.json, which the project's bench
renders into docs/BENCHMARKS.md. The machine is shared: the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no scripts/__pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_htdemucs as ex  # noqa: E402

ROOT = ex.ROOT


def machine() -> str:
    """As dme/benches/system.rs writes it: "<processors> cores, <model name>"."""
    with open("/proc/cpuinfo") as f:
        lines = f.read().splitlines()
    cores = sum(1 for line in lines if line.startswith("processor"))
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    return f"{cores} cores, {model}"


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def describe(path: str) -> tuple[float, int]:
    import onnx

    m = onnx.load(path, load_external_data=False)
    return os.path.getsize(path) / 1e6, len(m.graph.node)


def spectral_seconds(path: str, x) -> tuple[float, float]:
    """One profiled run on 1 thread (after a warm-up): (the run's seconds, the seconds of its
    STFT/iSTFT nodes). Those are demucs-onnx's /real_stft and /real_istft nodes in the
    convolution export; in the other, the nodes outside the network's modules (STFT, DFT and
    the reshaping around them). Both counts include the few other top-level nodes (padding,
    the time branch's input), about 0.03 s."""
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_cpu_mem_arena = False
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        sess.run(None, {"mix": x})
        sess.run(None, {"mix": x})
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    run = [e for e in events if e.get("name") == "model_run"][-1]
    spectral = 0.0
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or not run["ts"] <= e["ts"] < run["ts"] + run["dur"]:
            continue
        node = name[: -len("_kernel_time")]
        # Fused nodes (Gelu_token_*, Reorder*_token_*) are the network's own.
        if "/real_stft/" in node or "/real_istft/" in node or (node.count("/") == 1 and node.startswith("/")):
            spectral += e["dur"] / 1e6
    return run["dur"] / 1e6, spectral


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conv", default=os.path.join(ROOT, "models", "htdemucs-random.onnx"))
    ap.add_argument("--onnx", default=os.path.join(ROOT, "models", "htdemucs-random-dft.onnx"))
    ap.add_argument("--seed", type=int, default=0, help="the weights' seed, when the models have to be exported")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "export.json"))
    args = ap.parse_args()
    ex.ensure_venv(__file__)
    import numpy as np

    conv, dft = os.path.abspath(args.conv), os.path.abspath(args.onnx)
    if not os.path.exists(dft) or not os.path.exists(conv):
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "export_htdemucs.py"), "--spectral", "onnx",
                        "--seed", str(args.seed), "--out", dft, "--against", conv], check=True)
    threads = [int(t) for t in args.threads.split(",")]
    load_before = loadavg()
    peak_load = float(load_before.split()[0])
    started = time.time()
    diff = ex.compare(dft, conv)
    x = np.random.default_rng(0).standard_normal((1, 2, ex.SEGMENT_SAMPLES)).astype(np.float32)
    medians: dict[tuple[str, int], float] = {}
    spread: dict[tuple[str, int], str] = {}
    fastest: dict[tuple[str, int], float] = {}
    for n in threads:
        sessions = {}
        for name, path in (("conv", conv), ("onnx", dft)):
            t0 = time.perf_counter()
            sessions[name] = ex.session(path, n)
            print(f"{n} thread(s): {name} loaded in {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"conv": [], "onnx": []}
        for name, sess in sessions.items():
            sess.run(None, {"mix": x})  # warm-up
        for _ in range(args.runs):
            for name, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, {"mix": x})
                times[name].append(time.perf_counter() - t0)
                peak_load = max(peak_load, float(loadavg().split()[0]))
        for name in sessions:
            medians[(name, n)] = statistics.median(times[name])
            spread[(name, n)] = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
            fastest[(name, n)] = min(times[name])
            print(f"{n} thread(s): {name}: median {medians[(name, n)]:.3f} s per segment "
                  f"(runs {', '.join(f'{t:.2f}' for t in times[name])})")
        del sessions
    shares = {name: spectral_seconds(path, x) for name, path in (("conv", conv), ("onnx", dft))}
    for name, (run_s, spec_s) in shares.items():
        print(f"profiled run, 1 thread: {name}: {run_s:.2f} s, of which STFT/iSTFT {spec_s:.3f} s")
    load_after = loadavg()
    (conv_mb, conv_nodes), (dft_mb, dft_nodes) = describe(conv), describe(dft)

    figures = []
    for n in threads:
        for name, label in (("conv", "convolution STFT/iSTFT"), ("onnx", "ONNX STFT/DFT")):
            figures.append({"figure": f"{label} export, {n} thread{'s' if n > 1 else ''}: median per segment",
                            "value": round(medians[(name, n)], 3), "unit": "s", "target": "", "met": None})
    for n in threads:
        speedup = medians[("conv", n)] / medians[("onnx", n)]
        least = fastest[("conv", n)] / fastest[("onnx", n)]
        # Met only when the fastest runs agree: on a shared machine the medians alone can land
        # above the target because of other load (the convolution export suffers more from it).
        figures.append({"figure": f"speed-up per segment, {n} thread{'s' if n > 1 else ''} (conv / onnx)",
                        "value": round(speedup, 3), "unit": "x", "target": ">= 1.3", "met": bool(speedup >= 1.3 and least >= 1.3)})
        figures.append({"figure": f"speed-up of the fastest runs, {n} thread{'s' if n > 1 else ''} (least disturbed by other load)",
                        "value": round(least, 3), "unit": "x", "target": "", "met": None})
    figures.append({"figure": "max abs difference of the stems, onnx against conv export", "value": float(f"{diff:.3g}"),
                    "unit": "", "target": "<= 1e-4", "met": bool(diff <= 1e-4)})
    for name, label in (("conv", "convolution"), ("onnx", "ONNX STFT/DFT")):
        figures.append({"figure": f"{label} export: its STFT/iSTFT nodes in one profiled run of "
                        f"{shares[name][0]:.2f} s, 1 thread", "value": round(shares[name][1], 3), "unit": "s", "target": "", "met": None})
    ceiling = shares["conv"][0] / (shares["conv"][0] - shares["conv"][1])
    figures.append({"figure": "most any STFT/iSTFT could give, 1 thread: profiled conv run / (that run less its STFT/iSTFT)",
                    "value": round(ceiling, 3), "unit": "x", "target": "", "met": None})
    figures.append({"figure": "file size, conv export", "value": round(conv_mb, 1), "unit": "MB", "target": "", "met": None})
    figures.append({"figure": "file size, onnx export", "value": round(dft_mb, 1), "unit": "MB", "target": "", "met": None})
    figures.append({"figure": "graph nodes, conv export (before onnxruntime's optimisation)", "value": conv_nodes, "unit": "", "target": "", "met": None})
    figures.append({"figure": "graph nodes, onnx export (before onnxruntime's optimisation)", "value": dft_nodes, "unit": "", "target": "", "met": None})
    for f in figures:
        print(f"  {f['figure']}: {f['value']} {f['unit']}" + (f" (target {f['target']}: {'met' if f['met'] else 'NOT met'})" if f["target"] else ""))

    import onnxruntime as ort

    threads_txt = " and ".join(str(n) for n in threads)
    result = {
        "name": "export",
        "title": "HT-Demucs export: STFT/iSTFT as ONNX STFT/DFT against convolutions (item 4)",
        "command": f"make bench-export (python3 scripts/bench_export.py --runs {args.runs} --threads {args.threads})",
        "machine": machine(),
        "load_average": load_after,
        "measured_at_unix_s": int(started),
        "setup": (f"Two exports of the same randomly initialised htdemucs (the seed they were exported with, 0 unless --seed said otherwise; 41.98 M parameters; the difference below shows the weights are the same) by "
                  f"scripts/export_htdemucs.py: --spectral conv (demucs-onnx's STFT/iSTFT as Conv/ConvTranspose) and "
                  f"--spectral onnx (ONNX STFT and inverse DFT, overlap-add by shifted slices). Input: one segment of "
                  f"343980 samples (7.8 s) of seeded Gaussian noise (RMS 1). onnxruntime {ort.__version__}, CPU execution "
                  f"provider, graph optimisation level ALL, CPU memory arena off, {threads_txt} intra-op threads. Both "
                  f"sessions loaded side by side; one warm-up run each, then {args.runs} runs each, alternating the "
                  f"models; medians. The difference is the largest over three mixes (seeded noise RMS 1, tones+noise "
                  f"RMS 0.05 and RMS 3), both models in onnxruntime."),
        "figures": figures,
        "notes": "",
    }
    notes = [f"Load average {load_before} before the runs, {load_after} after; the 1-minute figure reached "
             f"{peak_load:.2f} between runs.",
             "Fastest-slowest run per model and thread count: " + "; ".join(
                 f"{k[0]}, {k[1]} thread{'s' if k[1] > 1 else ''}: {v} s" for k, v in spread.items()) + "."]
    for n in threads:
        speedup = medians[("conv", n)] / medians[("onnx", n)]
        least = fastest[("conv", n)] / fastest[("onnx", n)]
        if speedup < 1.3:
            notes.append(f"{n} thread{'s' if n > 1 else ''}: {speedup:.3f}x, {1.3 - speedup:.3f} short of the 1.3x target.")
        if (speedup >= 1.3) != (least >= 1.3):
            notes.append(f"{n} thread{'s' if n > 1 else ''}: the medians give {speedup:.3f}x but the fastest runs "
                         f"{least:.3f}x: other load on the machine decided which side of 1.3x the medians fall, so "
                         f"the target is marked met only when both reach it.")
    notes.append(f"Why not more: in the profiled 1-thread runs the convolution export's STFT/iSTFT took "
                 f"{shares['conv'][1]:.2f} s of {shares['conv'][0]:.2f} s and the ONNX STFT/DFT path "
                 f"{shares['onnx'][1]:.2f} s of {shares['onnx'][0]:.2f} s; the rest of the network is the same in "
                 f"both, so even a free STFT/iSTFT would give at most {ceiling:.2f}x on this machine.")
    if peak_load > 2.5:
        notes.append(f"The 1-minute load average reached {peak_load:.2f} on this 2-core machine (other builds and tests "
                     f"ran beside it): the seconds are inflated and noisy (see the spread above); the fastest runs "
                     f"and the profiled share are the sturdier guides to the speed-up.")
    result["notes"] = " ".join(notes)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
