#!/usr/bin/env python3
"""Check the ONNX models of dme with ONNX Runtime (CPU, 1 intra-op thread).

Usage:
    .tools/venv/bin/python models/gen/check.py [--models DIR] [--no-regen] [--runs N]

For every model: IR version / opset, the tensor contract (input `mix` [1,2,T], output `stems`
[1,S,2,T]), the metadata (sources, sample_rate, name, segment_samples for dynamic-T models),
then runs it on random input of several lengths and checks the output shape and finiteness;
for default.onnx and sum_dynamic.onnx also that the stems sum to the mix (max abs error
< 1e-5). Prints the median run time of each length. bad_contract.onnx must load and show its
wrong contract. Unless --no-regen, also regenerates all models into a temporary folder and
checks that they are byte-identical to the files in DIR.
Exit status 0 when everything passes.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DIR = os.path.normpath(os.path.join(HERE, ".."))

DYN_LENGTHS = [1, 1000, 44100, 100000, 343980]
# name -> (number of sources, fixed T or None, lengths to run, stems must sum to mix)
MODELS = {
    "default.onnx": (4, None, DYN_LENGTHS, True),
    "test/conv_fixed.onnx": (4, 44100, [44100], False),
    "test/conv_dynamic.onnx": (4, None, DYN_LENGTHS, False),
    "test/conv_six.onnx": (6, None, DYN_LENGTHS, False),
    "test/sum_dynamic.onnx": (4, None, DYN_LENGTHS, True),
    "test/slow_dynamic.onnx": (4, None, [1, 1000, 44100], False),
}
EXPECTED_SEGMENT = {"default.onnx": "343980"}  # others: 44100


class Fail(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def dims(vi):
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def check_model(root, rel, n_src, fixed_t, lengths, sums, runs):
    path = os.path.join(root, rel)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opsets = {o.domain: o.version for o in model.opset_import}
    expect(model.ir_version <= 13, f"ir_version {model.ir_version} > 13 (ONNX Runtime 1.31 refuses it)")
    expect(opsets.get("", 0) == 18, f"default-domain opset {opsets}")
    md = {p.key: p.value for p in model.metadata_props}
    sources = md.get("sources", "").split(",")
    expect(len(sources) == n_src and all(sources), f"sources metadata {md.get('sources')!r}")
    expect(md.get("sample_rate") == "44100", f"sample_rate metadata {md.get('sample_rate')!r}")
    expect(md.get("name"), "missing name metadata")
    if fixed_t is None:
        want = EXPECTED_SEGMENT.get(rel, "44100")
        expect(md.get("segment_samples") == want, f"segment_samples {md.get('segment_samples')!r} != {want}")
    else:
        expect("segment_samples" not in md, "fixed-T model must not have segment_samples")
    g = model.graph
    expect([i.name for i in g.input] == ["mix"], f"inputs {[i.name for i in g.input]}")
    expect([o.name for o in g.output] == ["stems"], f"outputs {[o.name for o in g.output]}")
    t_dim = fixed_t if fixed_t is not None else "T"
    expect(dims(g.input[0]) == [1, 2, t_dim], f"input dims {dims(g.input[0])}")
    expect(dims(g.output[0]) == [1, n_src, 2, t_dim], f"output dims {dims(g.output[0])}")
    size = os.path.getsize(path)
    print(f"{rel}: {size} bytes, ir {model.ir_version}, opset {opsets['']}, metadata {md}")

    sess = session(path)
    rng = np.random.default_rng(1234)
    for T in lengths:
        x = (0.25 * rng.standard_normal((1, 2, T))).astype(np.float32)
        y = sess.run(None, {"mix": x})[0]  # warm-up (and the checked output)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {"mix": x})
            times.append(time.perf_counter() - t0)
        expect(y.shape == (1, n_src, 2, T), f"T={T}: output shape {y.shape}")
        expect(y.dtype == np.float32, f"T={T}: dtype {y.dtype}")
        expect(np.isfinite(y).all(), f"T={T}: non-finite output")
        line = f"  T={T:6d}: shape {list(y.shape)} ok, finite, median {np.median(times) * 1000:8.2f} ms ({runs} runs)"
        if sums:
            err = float(np.abs(y.sum(axis=1) - x).max())
            expect(err < 1e-5, f"T={T}: stems do not sum to the mix (max error {err:.3g})")
            line += f", |sum(stems)-mix| max {err:.2e}"
        print(line)
    if fixed_t is None or fixed_t == 44100:
        T = fixed_t or 4410
        y = sess.run(None, {"mix": np.zeros((1, 2, T), np.float32)})[0]
        expect(np.isfinite(y).all() and np.abs(y).max() < 1e-6, "silence in must give (near) silence out")
        print(f"  silence T={T}: finite, max |y| {np.abs(y).max():.1e}")


def check_bad_contract(root):
    rel = "test/bad_contract.onnx"
    path = os.path.join(root, rel)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    expect(model.ir_version <= 13, f"ir_version {model.ir_version}")
    sess = session(path)
    ins, outs = sess.get_inputs(), sess.get_outputs()
    expect([i.name for i in ins] == ["audio"] and ins[0].shape == [1, 1, "T"], f"inputs {[(i.name, i.shape) for i in ins]}")
    expect([o.name for o in outs] == ["output"] and outs[0].shape == [1, "T"], f"outputs {[(o.name, o.shape) for o in outs]}")
    y = sess.run(None, {"audio": np.ones((1, 1, 100), np.float32)})[0]
    expect(y.shape == (1, 100), f"output shape {y.shape}")
    print(f"{rel}: {os.path.getsize(path)} bytes, loads; wrong contract as intended: "
          f"input {ins[0].name} {ins[0].shape}, output {outs[0].name} {outs[0].shape}")


def check_regen(root):
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, os.path.join(HERE, "generate.py"), "--out", tmp], check=True, stdout=subprocess.DEVNULL)
        rels = sorted(list(MODELS) + ["test/bad_contract.onnx"])
        for rel in rels:
            same = filecmp.cmp(os.path.join(tmp, rel), os.path.join(root, rel), shallow=False)
            expect(same, f"{rel}: regenerated file differs from {os.path.join(root, rel)}")
    print(f"regenerated {len(rels)} models: byte-identical")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_DIR, help="folder holding default.onnx and test/ (default: models/)")
    ap.add_argument("--no-regen", action="store_true", help="skip the byte-identical regeneration check")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per length")
    args = ap.parse_args(argv)
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, numpy {np.__version__}, 1 intra-op thread")
    failures = 0
    checks = [(lambda r=rel, v=v: check_model(args.models, r, *v, runs=args.runs)) for rel, v in MODELS.items()]
    checks.append(lambda: check_bad_contract(args.models))
    if not args.no_regen:
        checks.append(lambda: check_regen(args.models))
    for c in checks:
        try:
            c()
        except (Fail, Exception) as e:  # noqa: BLE001 - report and continue
            failures += 1
            print(f"FAIL: {type(e).__name__}: {e}")
    print("ALL CHECKS PASSED" if failures == 0 else f"{failures} CHECK(S) FAILED")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
