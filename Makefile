# dme: the two commands a newcomer needs.
#   make run   set up, build (release) and run the whole system with the embedded model
#   make test  set up, then run every test against a real nats-server and ONNX Runtime
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV = eval "$$(scripts/setup.sh)"

.PHONY: run test setup build lint fmt

setup:
	@scripts/setup.sh >/dev/null

build:
	cargo build --release --bin dme

run: setup build
	@$(ENV); echo "dme: starting; the web API will be at http://$${DME_HTTP_ADDR:-127.0.0.1:8080}/"; \
	exec target/release/dme up

# The browser test (dme/tests/browser.rs) needs Debian's chromium and chromium-driver.
test: setup
	@scripts/setup.sh --browser >/dev/null
	@$(ENV); cargo test --workspace --no-fail-fast 2>&1

lint:
	scripts/msrv.sh
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# Quality and the real-architecture model (see eval/results.md and scripts/export_htdemucs.py).
#   make eval            SDR of the default model through the whole system vs mix/4 and the oracle
#   make htdemucs-model  export a randomly initialised HT-Demucs to models/htdemucs-random.onnx (~5 GB of wheels)
#   make test-htdemucs   the system with that model equals a single-process run (opt-in, slow)
.PHONY: eval htdemucs-model test-htdemucs

eval: setup build
	@DME_EVAL_VIA_MAKE=1 scripts/eval.sh

htdemucs-model:
	python3 scripts/export_htdemucs.py

test-htdemucs: setup
	@$(ENV); cargo test -p dme --test htdemucs -- --ignored --nocapture 2>&1

# An hour of silence through the whole pipeline costs under 200 MB of store at its peak
# (dme/tests/storage_cost.rs): it separates 616 segments, about 11 minutes on 2 cores.
.PHONY: test-long
test-long: setup
	@$(ENV); cargo test -p dme --test storage_cost -- --ignored --nocapture 2>&1

# The chaos matrix (dme/tests/chaos.rs): every process SIGKILLed in every phase of a song,
# DME_CHAOS_TRIALS (3) times per cell; DME_CHAOS_SEED replays a run, DME_CHAOS_CELLS picks cells.
# `make test` runs a sample of six cells, rotating with the seed.
.PHONY: test-chaos
test-chaos: setup
	@$(ENV); cargo test -p dme --test chaos -- --ignored --nocapture 2>&1

# Figures of a real system on this machine (issue 15): pipeline overhead against the
# single-process loop, re-mix, the gateway under load (Debian's wrk), decoding against ffmpeg,
# peak memory. Writes bench/results/*.json and docs/BENCHMARKS.md; release builds; about
# 15 minutes on 2 cores. Not part of `make test`. DME_BENCH_ONLY=pipeline,remix,load,decoding,memory,fleet
# runs some groups (the others' JSON files are kept), DME_BENCH_RUNS the pipeline's runs.
.PHONY: bench
bench: setup
	@for tool in wrk ffmpeg; do command -v $$tool >/dev/null || [ "$$(id -u)" != 0 ] || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$tool >&2 || true; done
	@$(ENV); cargo bench -p dme --bench system 2>&1

# The HT-Demucs figures of issue 15 (the system against a bare ONNX Runtime loop on the
# random-weight export, the separator's memory); exports the model first when it is missing
# (make htdemucs-model: about 5 GB of wheels). About 13 minutes on 2 cores after the builds.
.PHONY: bench-htdemucs
bench-htdemucs: setup
	@out="$${DME_HTDEMUCS:-models/htdemucs-random.onnx}"; [ -e "$$out" ] || python3 scripts/export_htdemucs.py --out "$$out"
	@$(ENV); DME_BENCH_ONLY=htdemucs cargo bench -p dme --bench system 2>&1

# Item 4: the HT-Demucs export with STFT/iSTFT as ONNX STFT/DFT operators against the convolution
# export of the same weights (max difference of the stems, seconds per segment at 1 and 2 threads
# in onnxruntime); writes bench/results/export.json, exporting the models first when missing.
# About 5 minutes on 2 cores after the exports. Python only.
.PHONY: bench-export
bench-export:
	python3 scripts/bench_export.py
