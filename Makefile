# Every target does its own setup from a clean clone: the venv with the
# torch wheel (libtorch for tch), then the cargo build.
#   make demo   build, train, save, load in a fresh process, inspect, verify
#   make test   formatting, lints, every test
#   make bench  save/load against raw I/O and tch (1 GiB); optimizer step against
#               LibTorch's C++ optimizers and torch.optim

VENV := .venv
PY := $(VENV)/bin/python
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
CARGO := cargo
DEMO_DIR := out/demo

.PHONY: all demo test lint rust-test bench fuzz venv deps build clean

all: test

venv: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Tools the tests call that a bare machine may lack.
deps:
	@command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip; }

build: venv
	$(CARGO) build --release --all-targets

demo: build
	@mkdir -p $(DEMO_DIR)
	./target/release/examples/quickstart $(DEMO_DIR)
	@latest=$$(ls -t $(DEMO_DIR)/quickstart_checkpoint_*.zip | head -n 1); \
	  echo "== pytorch-saver inspect $$latest"; ./target/release/pytorch-saver inspect $$latest && \
	  echo "== pytorch-saver verify $(DEMO_DIR)/*.zip"; ./target/release/pytorch-saver verify $(DEMO_DIR)/*.zip

lint: venv
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --no-default-features --all-targets -- -D warnings
	$(VENV)/bin/ruff check tests benches
	$(VENV)/bin/ruff format --check tests benches

rust-test: venv deps
	$(CARGO) test --release

test: lint rust-test

bench: build
	$(CARGO) bench --bench save_load
	$(CARGO) bench --bench optim_step

# Coverage-guided fuzzing of the reader (needs a nightly toolchain and
# cargo-fuzz: cargo install cargo-fuzz), seeded with the golden files;
# FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 300
FUZZ_TARGETS ?= open open_crc_fixed
fuzz:
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t && cp tests/golden/*/*.zip fuzz/corpus/$$t/ && \
	  (cd fuzz && cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=65536) || exit 1; \
	done

clean:
	rm -rf target out
