# edge-agent — build, test, run. `make help` lists the targets.
SHELL := /bin/bash
PREFIX ?= /usr/local
DESTDIR ?=
SWIFT ?= swift
CONFIG ?= release
BIN := .build/$(CONFIG)
# What `make run` and `make install` ship: agentd and agentctl with the Swift runtime linked in
# statically, so a device needs no Swift installation, and agentd's resident memory is lower
# (README, "agentd figures"). The tests use the dynamically linked build in $(BIN) (Swift Testing
# has no static form).
DIST := .build-static/$(CONFIG)
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := libopenblas-dev libsqlite3-dev libmosquitto-dev mosquitto mosquitto-clients pkg-config
# Only for `make test`: aarch64 headers so the NEON kernels are compiled on every run; python3-seccomp
# for the confinement test; systemd for systemd-analyze (check-unit); gdb for the stacks of a hung test run.
TEST_PACKAGES := libc6-dev-arm64-cross linux-libc-dev-arm64-cross python3-seccomp systemd gdb
# promtool for MetricsTests, taken out of Debian's prometheus package rather than installing it: the
# package (96 MB, 37 packages with recommends) enables and starts a Prometheus server and node exporter.
PROMTOOL_DIR := .build/promtool
DEMO_MODEL := .agentd/digits-mlp.safetensors
# libFuzzer targets (tools/fuzz): seconds per target, and their own scratch path and working corpora (.fuzz/).
FUZZ_SECONDS ?= 60
FUZZ_SCRATCH := .build-fuzz
# `swift test` (build included) is stopped after this many seconds with every thread's stack
# printed (tools/dev/watchdog.sh): a hang ends well inside CI's 90 minutes with the place it hung.
TEST_TIME_LIMIT ?= 3600
# tools/fleet-sim: agentd processes on one broker.
FLEET_AGENTS ?= 50

.PHONY: help bench-compress onnx-proto kernel-bench fleet-sim drift-eval learn-eval fuzz fuzz-build microbench check-unit promtool deps install-packages check-aarch64 build dist test interop-test interop-test-run run bench bench-agentd venv install clean

help:
	@echo "make run      build, install missing Debian packages, start a private mosquitto and agentd in the foreground with the demo model"
	@echo "make test     install missing Debian packages, build, run every test"
	@echo "make bench    compare against ONNX Runtime, FP32 and INT8: MLP, 8x8 and 28x28 CNNs, 5 runs with ranges (tools/bench/compare_onnxruntime.py)"
	@echo "make bench-compress  the compression pipeline on digits: FP32, pruned, distilled, INT8, QAT INT4 (also part of make bench)"
	@echo "make microbench  kernel, plan and drift micro-benchmarks (tools/benchmarks, ordo-one/benchmark)"
	@echo "make kernel-bench  the INT8 and FP32 GEMM kernels per ISA path, each checked against the portable one (no Swift build; EDGE_ISA forces a path elsewhere)"
	@echo "make drift-eval  the drift harness on digits, and River's ADWIN/KSWIN on the same streams (DRIFT_SEEDS=$(DRIFT_SEEDS))"
	@echo "make learn-eval  the on-device learning harness on digits shifts: none, fine-tune, EWC, replay, distillation, product, joint (LEARN_SEEDS=$(LEARN_SEEDS))"
	@echo "make fleet-sim  FLEET_AGENTS=$(FLEET_AGENTS) agentd processes on one mosquitto: a signed deployment to all, time to converge, broker CPU, idle traffic"
	@echo "make bench-agentd  agentd start time, memory, idle CPU, load with and without batching, also on a 28x28 CNN and a 784-1536-1536-10 MLP (AGENTD_FIGURES_FLAGS=--batching-only: those alone)"
	@echo "make fuzz     build the libFuzzer targets (ASan) and run each FUZZ_SECONDS=$(FUZZ_SECONDS) with its seed corpus (README, \"Fuzzing\")"
	@echo "make install  install agentd, agentctl, the unit, the config and the demo model (PREFIX=$(PREFIX) DESTDIR=$(DESTDIR))"

# Installs only what is missing, as root or through sudo.
deps:
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(DEBIAN_PACKAGES)"

install-packages:
	@missing=""; for p in $(PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build -c $(CONFIG)

dist: deps
	$(SWIFT) build -c $(CONFIG) --static-swift-stdlib --scratch-path .build-static --product agentd
	$(SWIFT) build -c $(CONFIG) --static-swift-stdlib --scratch-path .build-static --product agentctl

KERNEL_SUITES = PoolNHWCTests|Im2RowTests|Int8GEMMTests|PackedGEMMTests|QuantizedPlanTests|SoftmaxTests|QuantizeKernelTests

# One build: `swift test` builds every target, agentd and agentctl included, with testing enabled
# (a separate `swift build` first would build everything twice, the flags differing).
test: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(TEST_PACKAGES)"
	@$(MAKE) --no-print-directory check-aarch64
	@$(MAKE) --no-print-directory check-unit
	@$(MAKE) --no-print-directory promtool
	PROMTOOL=$$(command -v promtool || echo $(CURDIR)/$(PROMTOOL_DIR)/usr/bin/promtool) tools/dev/watchdog.sh $(TEST_TIME_LIMIT) $(SWIFT) test -c $(CONFIG)
	@# The kernels' other paths, which this CPU would not choose (the portable one is aarch64's
	@# pooling and im2row): EDGE_ISA forces a path the CPU supports and is ignored otherwise.
	EDGE_ISA=portable $(SWIFT) test -c $(CONFIG) --skip-build --filter '$(KERNEL_SUITES)'
	EDGE_ISA=avx2 $(SWIFT) test -c $(CONFIG) --skip-build --filter '$(KERNEL_SUITES)'
	@$(MAKE) --no-print-directory interop-test-run

# promtool on PATH, else usr/bin/promtool unpacked from the prometheus .deb into $(PROMTOOL_DIR).
promtool:
	@command -v promtool >/dev/null || [ -x $(PROMTOOL_DIR)/usr/bin/promtool ] || { \
	  mkdir -p $(PROMTOOL_DIR) && cd $(PROMTOOL_DIR) && rm -f prometheus_*.deb && \
	  { apt-get download -qq prometheus 2>/dev/null || { if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	    $$SUDO apt-get update -qq && apt-get download -qq prometheus; }; } && \
	  dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool && rm -f prometheus_*.deb && \
	  echo "promtool unpacked into $(PROMTOOL_DIR)/usr/bin"; }

# Python venv for the exporter, the interop tests and the ONNX Runtime comparison.
# If pip cannot reach its registry the venv is left incomplete and interop-test says so.
$(VENV)/.stamp: tools/requirements.txt
	@python3 -m venv $(VENV) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get install -y -qq python3-venv >/dev/null && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tools/requirements.txt
	@touch $@

venv: $(VENV)/.stamp

interop-test: build
	@$(MAKE) --no-print-directory interop-test-run

interop-test-run:
	@if $(MAKE) --no-print-directory venv; then \
	  AGENTCTL=$(BIN)/agentctl $(PY) -m pytest -q -p no:cacheprovider -W ignore::UserWarning tools/export; \
	else \
	  echo "SKIPPED interop tests (sklearn predict_proba, NumPy conv/pool reference): pip could not install tools/requirements.txt"; \
	fi

# The demo model, trained on 80% of digits and prepared for the field: its drift reference's
# histograms come from the training rows, its thresholds from the rest.
$(DEMO_MODEL): | dist
	@mkdir -p .agentd
	$(DIST)/agentctl model train --data tools/data/digits.csv --arch mlp:64-256-256-10 --epochs 30 --seed 1 --name digits-mlp --out .agentd/digits-mlp-trained.safetensors
	$(DIST)/agentctl model prepare .agentd/digits-mlp-trained.safetensors --data tools/data/digits.csv --out $(DEMO_MODEL)

# A private mosquitto on a free loopback port, the development config (state and socket under
# ./.agentd/, the demo model quantized to INT8 at first start, the fleet link to that broker) and
# a development signing key; then agentd in the foreground (tools/dev/run.sh).
run: dist $(DEMO_MODEL)
	@tools/dev/run.sh $(DIST) $(DEMO_MODEL)

# Compiles the C kernels for aarch64 (NEON dot-product path) with the toolchain's clang.
check-aarch64:
	@for f in Sources/CKernels/*.c; do \
	  clang --target=aarch64-linux-gnu -isystem /usr/aarch64-linux-gnu/include -O2 -Wall -Werror -c \
	    -I Sources/CKernels/include $$f -o /dev/null || exit 1; \
	done; echo "CKernels compile for aarch64 (neon-dot path included)"

bench: dist venv
	$(PY) tools/bench/compare_onnxruntime.py --agentctl $(DIST)/agentctl
	@$(MAKE) --no-print-directory bench-compress

# The compression pipeline alone (README, "Compression"): baseline, pruned, distilled, INT8, QAT INT4,
# on the digits MLP and CNN and the 28x28 CNN.
bench-compress: dist venv
	@mkdir -p .agentd
	@test -f .agentd/digits28.csv || $(PY) tools/bench/digits28.py .agentd/digits28.csv
	python3 tools/bench/compress_pipeline.py --agentctl $(DIST)/agentctl --digits28 .agentd/digits28.csv

fleet-sim: dist
	python3 tools/fleet-sim/fleet_sim.py --bin $(DIST) --agents $(FLEET_AGENTS)

bench-agentd: dist $(DEMO_MODEL) venv
	@test -f .agentd/digits-cnn.safetensors || $(DIST)/agentctl model train --data tools/data/digits.csv \
	  --arch cnn:1x8x8-c32-c64-m2-f128-10 --epochs 3 --seed 1 --name digits-cnn --out .agentd/digits-cnn.safetensors
	@test -f .agentd/digits28.csv || $(PY) tools/bench/digits28.py .agentd/digits28.csv
	@test -f .agentd/cnn28.safetensors || $(DIST)/agentctl model train --data .agentd/digits28.csv \
	  --arch cnn:1x28x28-c16k5-m2-c32k5-m2-f64-10 --epochs 3 --seed 1 --name cnn28 --out .agentd/cnn28.safetensors
	@test -f .agentd/mlp28.safetensors || $(DIST)/agentctl model train --data .agentd/digits28.csv \
	  --arch mlp:784-1536-1536-10 --epochs 3 --seed 1 --name mlp28 --out .agentd/mlp28.safetensors
	python3 tools/bench/agentd_figures.py --bin $(DIST) --model $(DEMO_MODEL) --compute-model .agentd/digits-cnn.safetensors \
	  --calibration tools/data/digits.csv --cnn-model .agentd/cnn28.safetensors --cnn-model .agentd/mlp28.safetensors \
	  --cnn-calibration .agentd/digits28.csv --cnn-precision int8 --cnn-precision fp32 $(AGENTD_FIGURES_FLAGS)

# The on-device learning harness (README, "On-device learning"): a digits MLP 64-128-10 trained on
# the fixed training split (every row but each fifth), every method on every shift; then the
# product's update time on a 64-256-256-10 MLP.
LEARN_SEEDS ?= 5
LEARN_DIR := .build/learn-eval
learn-eval: dist
	@mkdir -p $(LEARN_DIR)
	$(DIST)/agentctl model train --data tools/data/digits.csv --arch mlp:64-128-10 --epochs 30 --seed 1 --name digits-mlp \
	  --out $(LEARN_DIR)/mlp128.safetensors > /dev/null
	$(DIST)/agentctl model learn-eval $(LEARN_DIR)/mlp128.safetensors --data tools/data/digits.csv --seeds $(LEARN_SEEDS)
	$(DIST)/agentctl model train --data tools/data/digits.csv --arch mlp:64-256-256-10 --epochs 30 --seed 1 --name digits-mlp \
	  --out $(LEARN_DIR)/mlp256.safetensors > /dev/null
	$(DIST)/agentctl model learn-eval $(LEARN_DIR)/mlp256.safetensors --data tools/data/digits.csv --seeds 2 --methods product,joint --no-policies

# The drift harness on digits (README, "Drift monitoring"): the model trained on half the rows,
# the reference's histograms from those rows, thresholds and check on 30% the model never saw,
# the drifted streams from the last 20% that neither saw; then River's ADWIN and KSWIN on the
# same streams' confidence. DRIFT_SEEDS streams per scenario.
DRIFT_SEEDS ?= 30
DRIFT_DIR := .build/drift-eval
drift-eval: dist venv
	@mkdir -p $(DRIFT_DIR)
	@for f in train prep eval; do head -1 tools/data/digits.csv > $(DRIFT_DIR)/$$f.csv; done
	@tail -n +2 tools/data/digits.csv | awk -v d=$(DRIFT_DIR) '{m=(NR-1)%10} m<5{print >> d"/train.csv"} m>=5&&m<8{print >> d"/prep.csv"} m>=8{print >> d"/eval.csv"}'
	$(DIST)/agentctl model train --data $(DRIFT_DIR)/train.csv --arch mlp:64-256-256-10 --epochs 30 --seed 1 --name digits-mlp \
	  --out $(DRIFT_DIR)/mlp.safetensors > /dev/null
	$(DIST)/agentctl model prepare $(DRIFT_DIR)/mlp.safetensors --reference-data $(DRIFT_DIR)/train.csv --data $(DRIFT_DIR)/prep.csv \
	  --out $(DRIFT_DIR)/mlp-field.safetensors
	$(DIST)/agentctl model drift-eval $(DRIFT_DIR)/mlp-field.safetensors --data $(DRIFT_DIR)/eval.csv --seeds $(DRIFT_SEEDS) \
	  --export-confidence $(DRIFT_DIR)/confidence.csv
	$(PY) -m pip install -q -r tools/bench/requirements-drift.txt
	$(PY) tools/bench/drift_river.py $(DRIFT_DIR)/confidence.csv

# libFuzzer targets with address sanitizer (tools/fuzz sub-package); not part of `make test`.
fuzz-build: deps
	$(SWIFT) build --package-path tools/fuzz --scratch-path $(FUZZ_SCRATCH) -c release -j 2 --sanitize=fuzzer --sanitize=address

# Each target for FUZZ_SECONDS, one after another (FUZZ_TARGETS="model config" for some); a crash, leak or timeout fails the run.
fuzz: fuzz-build
	tools/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_SCRATCH)/release $(FUZZ_TARGETS)

# The GEMM kernels alone, per ISA path, built from Sources/CKernels with clang as SwiftPM builds them (no Swift build).
kernel-bench:
	@mkdir -p .build
	$$(command -v clang || echo $(CC)) -O2 -ISources/CKernels/include tools/bench/gemm_bench.c Sources/CKernels/qgemm.c Sources/CKernels/sgemm.c \
	  Sources/CKernels/cpu.c -o .build/gemm-bench -lm
	.build/gemm-bench

# Regenerates Sources/ONNXImport/onnx-subset.pb.swift from its .proto (committed, so no build needs
# this): protoc from Debian, swift-protobuf's plugin built once into .build-protoc (about 3-10 minutes).
PROTOBUF_VERSION := 1.39.0
onnx-proto:
	@$(MAKE) --no-print-directory install-packages PACKAGES="protobuf-compiler"
	@test -x .build-protoc/src/.build/release/protoc-gen-swift || { rm -rf .build-protoc/src && \
	  git clone -q --depth 1 --branch $(PROTOBUF_VERSION) https://github.com/apple/swift-protobuf .build-protoc/src && \
	  $(SWIFT) build -c release --package-path .build-protoc/src --product protoc-gen-swift; }
	protoc --plugin=protoc-gen-swift=.build-protoc/src/.build/release/protoc-gen-swift --swift_out=Sources/ONNXImport \
	  --proto_path=Sources/ONNXImport/proto onnx-subset.proto

# Micro-benchmarks (ordo-one/benchmark sub-package): GEMM kernels per ISA and whole plans.
microbench: deps
	cd tools/benchmarks && $(SWIFT) package --disable-sandbox benchmark

install: dist $(DEMO_MODEL)
	install -D -s -m 0755 $(DIST)/agentd $(DESTDIR)$(PREFIX)/bin/agentd
	install -D -s -m 0755 $(DIST)/agentctl $(DESTDIR)$(PREFIX)/bin/agentctl
	install -D -m 0644 systemd/agentd.service $(DESTDIR)/lib/systemd/system/agentd.service
	install -D -m 0644 systemd/agentd.sysusers $(DESTDIR)/usr/lib/sysusers.d/agentd.conf
	install -D -m 0644 etc/agentd.toml $(DESTDIR)/etc/agentd/agentd.toml
	install -D -m 0644 $(DEMO_MODEL) $(DESTDIR)$(PREFIX)/share/agentd/digits-mlp.safetensors
	install -D -m 0644 tools/data/digits.csv $(DESTDIR)$(PREFIX)/share/agentd/digits.csv
	@if [ "$(PREFIX)" != "/usr" ]; then sed -i 's|/usr/bin/agentd|$(PREFIX)/bin/agentd|; s|/usr/share/agentd|$(PREFIX)/share/agentd|g' \
	  $(DESTDIR)/lib/systemd/system/agentd.service $(DESTDIR)/etc/agentd/agentd.toml; fi
	@# The agentd user and group now rather than at next boot; a DESTDIR tree gets them where it is installed.
	@if [ -z "$(DESTDIR)" ] && command -v systemd-sysusers >/dev/null; then systemd-sysusers /usr/lib/sysusers.d/agentd.conf; fi

# The unit's hardening score (<= 1.5 is the bar), where systemd-analyze exists (make test installs it).
check-unit:
	@if command -v systemd-analyze >/dev/null; then \
	  score=$$(systemd-analyze security --offline=true systemd/agentd.service 2>/dev/null | sed -n 's/.*Overall exposure level for agentd.service: \([0-9.]*\).*/\1/p'); \
	  echo "systemd-analyze security: agentd.service exposure $$score"; \
	  awk -v s="$$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' || { echo "exposure $$score is above 1.5"; exit 1; }; \
	else echo "SKIPPED unit hardening check: systemd-analyze is not installed"; fi

clean:
	rm -rf .build .build-static .build-fuzz .fuzz .agentd
