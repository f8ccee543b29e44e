# Every target does its own setup from a clean clone: the venv with the
# torch wheel (libtorch for tch), then the cargo build.
#   make demo   build, then train in Python, inspect with the CLI, resume in
#               Rust and serve from Go, checking the outputs at every step
#   make test   formatting, lints, every test
#   make bench  save/load against raw I/O and tch (1 GiB); loads of a 1 GiB model,
#               fresh and into existing objects, from Rust (C ABI) and Python
#               against torch.load(mmap), safetensors, DCP and raw reads, with
#               peak RSS and the PSS of four processes sharing one file;
#               optimizer step against LibTorch's C++ optimizers and torch.optim;
#               converting a 1 GiB torch.save file against raw I/O and
#               torch.load(mmap) + safetensors
#               and save/load at s3:// (moto) against local disk and plain transfers
#   make install     the C/C++ SDK (libraries, headers, pkg-config, CMake
#                    package) into PREFIX (default target/sdk)
#   make header      regenerate include/pytorch_saver.h after a C ABI change

VENV := .venv
PY := $(VENV)/bin/python
export LIBTORCH_USE_PYTORCH := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
CARGO := cargo
DEMO_DIR := out/demo
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
# The torch package of the venv: its libtorch is the one the library links.
TORCH_DIR = $(CURDIR)/$(VENV)/lib/python3.11/site-packages/torch
SDK := $(CURDIR)/target/sdk
PREFIX ?= $(SDK)
C_SOURCES = $(wildcard src/*.cpp src/*.h src/optim/*.cpp tests/c/*.c tests/c/*.h examples/c/*.c examples/cpp/*.cpp bindings/cpp/*.hpp bindings/cpp/tests/*.cpp bindings/cpp/tests/*.hpp bindings/go/*.c bindings/go/*.h)

.PHONY: all demo test lint rust-test python-package python-test c-test cpp-test go-test go-serve bench fuzz venv deps build clean lib install header

all: test

venv: $(VENV)/.installed
$(VENV)/.installed: requirements-dev.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Tools the tests call that a bare machine may lack.
deps:
	@for tool in unzip valgrind clang-format cmake pkg-config; do \
	  command -v $$tool >/dev/null || { apt-get update -qq && apt-get install -y -qq $$tool; } || exit 1; \
	done
	@test -f /usr/include/gtest/gtest.h || { apt-get update -qq && apt-get install -y -qq libgtest-dev; }

build: venv
	$(CARGO) build --release --all-targets

lib: venv
	$(CARGO) build --release --lib

# The C/C++ SDK: what a C, C++ or Go program needs to build against the
# library. Paths in the pkg-config and CMake files point into PREFIX and
# at the venv's libtorch.
install: lib
	install -d $(PREFIX)/include $(PREFIX)/lib/pkgconfig $(PREFIX)/lib/cmake/pytorch_saver
	install -m 644 include/pytorch_saver.h bindings/cpp/pytorch_saver.hpp $(PREFIX)/include/
	install -m 755 target/release/libpytorch_saver.so $(PREFIX)/lib/
	install -m 644 target/release/libpytorch_saver.a $(PREFIX)/lib/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@TORCH_LIB@|$(TORCH_DIR)/lib|' -e 's|@VERSION@|$(VERSION)|' \
	  bindings/pkgconfig/pytorch_saver.pc.in > $(PREFIX)/lib/pkgconfig/pytorch_saver.pc
	for f in pytorch_saverConfig pytorch_saverConfigVersion; do \
	  sed -e 's|@TORCH_DIR@|$(TORCH_DIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    bindings/cpp/cmake/$$f.cmake.in > $(PREFIX)/lib/cmake/pytorch_saver/$$f.cmake || exit 1; \
	done

# The C ABI from plain C99, under AddressSanitizer (leaks included) and
# UBSan, built through pkg-config as a user would; the panic test links the
# fault-injection variant of the library. Then the C example.
C_TEST_FLAGS := -std=c99 -Wall -Wextra -pedantic -Werror -g -fno-omit-frame-pointer -fsanitize=address,undefined
PKG_SDK := PKG_CONFIG_PATH=$(SDK)/lib/pkgconfig pkg-config
c-test: install deps
	$(CARGO) build --release --lib --features fault-injection
	install -d target/fault target/c
	cp target/release/libpytorch_saver.so target/fault/
	$(CARGO) build --release --lib
	cc $(C_TEST_FLAGS) tests/c/test_capi.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_capi
	cc $(C_TEST_FLAGS) tests/c/test_hostile.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_hostile
	cc $(C_TEST_FLAGS) tests/c/test_corpus.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_corpus
	cc $(C_TEST_FLAGS) tests/c/test_manager.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_manager
	cc $(C_TEST_FLAGS) tests/c/test_progress.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_progress
	cc $(C_TEST_FLAGS) tests/c/test_s3.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_s3
	cc $(C_TEST_FLAGS) tests/c/test_sharded.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_sharded
	cc $(C_TEST_FLAGS) tests/c/test_lbfgs.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_lbfgs
	cc $(C_TEST_FLAGS) tests/c/test_optim_registry.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -lm -o target/c/test_optim_registry
	cc $(C_TEST_FLAGS) -DPTS_FAULT_INJECTION tests/c/test_panic.c -Iinclude \
	  -Ltarget/fault -Wl,-rpath,$(CURDIR)/target/fault -lpytorch_saver -o target/c/test_panic
	cc -std=c99 -Wall -Wextra -pedantic -Werror examples/c/main.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/example
	rm -rf target/c/scratch && mkdir -p target/c/scratch
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_capi tests/golden/v1 target/c/scratch
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_hostile tests/hostile
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_corpus tests/corpus
	rm -rf target/c/sharded && mkdir -p target/c/sharded
	python3 tests/corpus/generate.py --write-valid target/c/sharded
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_sharded tests/corpus/sharded target/c/sharded
	rm -rf target/c/lbfgs && mkdir -p target/c/lbfgs
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_lbfgs target/c/lbfgs
	rm -rf target/c/optim_registry && mkdir -p target/c/optim_registry
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_optim_registry target/c/optim_registry
	rm -rf target/c/manager && mkdir -p target/c/manager
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_manager target/c/manager
	rm -rf target/c/progress && mkdir -p target/c/progress
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_progress target/c/progress
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 \
	  target/c/test_s3 $(CURDIR)/$(PY) tests/s3/moto_server.py
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1 RUST_BACKTRACE=0 target/c/test_panic
	@# ASan does not see inside the uninstrumented Rust and libtorch code; valgrind does.
	cc -std=c99 -g tests/c/test_capi.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_capi_plain
	@# The hostile files' memory bound is asserted in a plain build: ASan and valgrind change RSS.
	cc -std=c99 -g tests/c/test_hostile.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_hostile_plain
	RUST_BACKTRACE=0 target/c/test_hostile_plain tests/hostile
	rm -rf target/c/scratch && mkdir -p target/c/scratch
	RUST_BACKTRACE=0 valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
	  target/c/test_capi_plain tests/golden/v1 target/c/scratch
	cc -std=c99 -g tests/c/test_manager.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_manager_plain
	rm -rf target/c/manager && mkdir -p target/c/manager
	RUST_BACKTRACE=0 valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
	  target/c/test_manager_plain target/c/manager
	cc -std=c99 -g tests/c/test_progress.c $$($(PKG_SDK) --cflags --libs pytorch_saver) -o target/c/test_progress_plain
	rm -rf target/c/progress && mkdir -p target/c/progress
	RUST_BACKTRACE=0 valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite \
	  target/c/test_progress_plain target/c/progress
	@# The same example against the static library: same output.
	cc -std=c99 examples/c/main.c $$($(PKG_SDK) --cflags pytorch_saver) \
	  $$($(PKG_SDK) --static --libs pytorch_saver | sed 's/-lpytorch_saver/-l:libpytorch_saver.a/') -o target/c/example_static
	target/c/example tests/golden/v1/rust_mlp_inference.zip > target/c/example.out
	target/c/example_static tests/golden/v1/rust_mlp_inference.zip > target/c/example_static.out
	cmp target/c/example.out target/c/example_static.out && cat target/c/example.out

# The C++ wrapper's GoogleTest suite, the two-translation-unit include test
# and the C++ example, built with CMake through the installed package
# (find_package(pytorch_saver)) as a user would.
CPP_BUILD := target/cpp-build
cpp-test: install deps
	cmake -S bindings/cpp -B $(CPP_BUILD) -DCMAKE_PREFIX_PATH=$(SDK) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CPP_BUILD) -j2
	ctest --test-dir $(CPP_BUILD) --output-on-failure

header: venv
	PTS_BLESS_HEADER=1 $(CARGO) test --release --test header header_is_fresh

# Train in Python, inspect with the CLI, resume in Rust, serve from Go.
demo: build python-package go-serve
	examples/demo.sh $(DEMO_DIR)

# The Go binding (cgo, through the SDK's pkg-config file) and the serve
# example: vet, gofmt, the race detector, and the race detector again under
# GC stress (GOGC=1, and a build tag that collects before every C call) to
# expose a missing runtime.KeepAlive. Nothing is downloaded.
# Go's build cache does not see PKG_CONFIG_PATH, nor the contents of a
# header outside the package: the SDK's paths and a digest of the header
# go into CGO_CFLAGS and CGO_LDFLAGS, which it does see, so that a package
# built against another SDK or an older header is never reused.
HEADER_DIGEST := $(shell sha256sum include/pytorch_saver.h | cut -c1-16)
GO_ENV := PKG_CONFIG_PATH=$(SDK)/lib/pkgconfig GOTOOLCHAIN=local \
  CGO_CFLAGS="-g -O2 -I$(SDK)/include -DPTS_HEADER_DIGEST=$(HEADER_DIGEST)" CGO_LDFLAGS="-L$(SDK)/lib -Wl,-rpath,$(SDK)/lib"
go-test: install
	@test -z "$$(gofmt -l bindings/go examples/go)" || { gofmt -l bindings/go examples/go; exit 1; }
	cd bindings/go && $(GO_ENV) go vet ./...
	cd bindings/go && $(GO_ENV) go test -race -count=1 ./...
	cd bindings/go && $(GO_ENV) GOGC=1 go test -race -count=1 ./...
	cd bindings/go && $(GO_ENV) go test -race -count=1 -tags pytorchsaver_gcstress ./...
	cd examples/go/serve && $(GO_ENV) go vet ./...
	cd examples/go/serve && $(GO_ENV) go test -race -count=1 ./...
	cd examples/go/serve && $(GO_ENV) GOGC=1 go test -race -count=1 ./...

go-serve: install
	cd examples/go/serve && $(GO_ENV) go build -o $(CURDIR)/target/go/serve .

lint: venv deps
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) clippy --release --no-default-features --all-targets -- -D warnings
	$(CARGO) clippy --release --features fault-injection --lib -- -D warnings
	$(VENV)/bin/ruff check tests benches bindings/python examples/python
	$(VENV)/bin/ruff format --check tests benches bindings/python examples/python
	cd bindings/python && ../../$(VENV)/bin/mypy
	clang-format --dry-run -Werror $(C_SOURCES)

rust-test: venv deps python-package
	$(CARGO) test --release
	# Saves killed at exact points, writers held in a window, and link(2)
	# refused all need the crash points and errnos of fault-injection.
	$(CARGO) test --release --features fault-injection --test manager_kill_points --test s3_faults --test no_hard_links

# The pure-Python package, installed into the venv as a user would
# (`pip install ./bindings/python`; torch and safetensors are already there).
python-package: venv
	$(PY) -m pip install --quiet --no-deps --no-build-isolation ./bindings/python

python-test: python-package
	cd bindings/python && ../../$(PY) -m pytest -q tests

test: lint rust-test python-test c-test cpp-test go-test

bench: build python-package
	$(CARGO) bench --bench save_load
	$(CARGO) bench --bench optim_step
	$(CARGO) bench --bench load_capi
	$(CARGO) bench --bench manager_async
	.venv/bin/python benches/manager_async.py
	$(CARGO) bench --bench convert
	$(CARGO) bench --bench s3 -- --runs 3
	.venv/bin/python benches/sharded.py --runs 5

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
