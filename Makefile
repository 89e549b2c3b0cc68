# edge-agent — build, test, run. `make help` lists the targets.
SHELL := /bin/bash
PREFIX ?= /usr/local
DESTDIR ?=
SWIFT ?= swift
CONFIG ?= release
BIN := .build/$(CONFIG)
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := libopenblas-dev libsqlite3-dev libmosquitto-dev mosquitto pkg-config
# Only for `make test`: aarch64 headers so the NEON kernels are compiled on every run.
TEST_PACKAGES := libc6-dev-arm64-cross linux-libc-dev-arm64-cross
DEMO_MODEL := .agentd/digits-mlp.safetensors

.PHONY: help microbench deps install-packages check-aarch64 build test interop-test interop-test-run run bench venv install clean

help:
	@echo "make run      build, install missing Debian packages, train and evaluate the demo model"
	@echo "make test     install missing Debian packages, build, run every test"
	@echo "make bench    compare against ONNX Runtime, FP32 and INT8 (tools/bench/compare_onnxruntime.py)"
	@echo "make microbench  kernel and plan micro-benchmarks (tools/benchmarks, ordo-one/benchmark)"
	@echo "make install  install agentctl (PREFIX=$(PREFIX) DESTDIR=$(DESTDIR))"

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

test: deps
	@$(MAKE) --no-print-directory install-packages PACKAGES="$(TEST_PACKAGES)"
	$(SWIFT) build -c $(CONFIG)
	@$(MAKE) --no-print-directory check-aarch64
	$(SWIFT) test -c $(CONFIG)
	@$(MAKE) --no-print-directory interop-test-run

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

$(DEMO_MODEL): | build
	@mkdir -p .agentd
	$(BIN)/agentctl model train --data tools/data/digits.csv --arch mlp:64-256-256-10 --epochs 30 --seed 1 --name digits-mlp --out $(DEMO_MODEL)

run: build $(DEMO_MODEL)
	$(BIN)/agentctl model inspect $(DEMO_MODEL)
	$(BIN)/agentctl model eval $(DEMO_MODEL) --data tools/data/digits.csv --test-split

# Compiles the C kernels for aarch64 (NEON dot-product path) with the toolchain's clang.
check-aarch64:
	@for f in Sources/CKernels/*.c; do \
	  clang --target=aarch64-linux-gnu -isystem /usr/aarch64-linux-gnu/include -O2 -Wall -Werror -c \
	    -I Sources/CKernels/include $$f -o /dev/null || exit 1; \
	done; echo "CKernels compile for aarch64 (neon-dot path included)"

bench: build venv
	$(PY) tools/bench/compare_onnxruntime.py --agentctl $(BIN)/agentctl

# Micro-benchmarks (ordo-one/benchmark sub-package): GEMM kernels per ISA and whole plans.
microbench: deps
	cd tools/benchmarks && $(SWIFT) package --disable-sandbox benchmark

install: build
	install -D -m 0755 $(BIN)/agentctl $(DESTDIR)$(PREFIX)/bin/agentctl

clean:
	rm -rf .build .agentd
