# Thin front for CMake/CTest.  `make`, `make test`, `make install PREFIX=...`, `make bench`, `make asan`,
# `make fuzz` (FUZZ_SECONDS per harness, default 30).
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=

PREFIX ?= /usr/local

.PHONY: all build test bench asan fuzz clean install

all: build

build:
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Header, libcpattn.a/.so, the program, cpattn.pc, the CMake package and the
# Python package under PREFIX (docs/install.md); DESTDIR is honoured.
install: build
	DESTDIR=$(DESTDIR) cmake --install $(BUILD) --prefix $(PREFIX)

bench: build
	$(BUILD)/cpattn bench kernel

asan:
	cmake -S . -B $(ASAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DCPA_SANITIZE=ON $(CMAKE_FLAGS) >/dev/null
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	cd $(ASAN_BUILD) && ctest --output-on-failure -j $(JOBS) -L unit

fuzz:
	bash tests/fuzz/run.sh $(or $(FUZZ_SECONDS),30)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) build-fuzz
