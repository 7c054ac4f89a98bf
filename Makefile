# edge-lora developer tasks. `make test` is the README's test command and what CI runs.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.edge-lora-dev-installed
DEMO_STAMP := $(VENV)/.edge-lora-demo-installed
JOBS   ?= $(shell nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)

# The native engine (llama.cpp), built by the top-level CMakeLists.txt and installed into
# $(VENV): BACKEND=cpu|cuda|metal|vulkan (empty: cpu, metal on macOS), CPU=portable|native.
BACKEND ?=
CPU     ?= portable
ENGINE_CONFIG := $(or $(BACKEND),default)-$(CPU)
ENGINE_BUILD  := build/engine-$(ENGINE_CONFIG)
ENGINE_STAMP  := $(VENV)/.edge-lora-engine-$(ENGINE_CONFIG)
ENGINE_ARGS   := -DEDGE_LORA_CPU=$(CPU) $(if $(BACKEND),-DEDGE_LORA_BACKEND=$(BACKEND)) $(CMAKE_ARGS)

.PHONY: install engine engine-native-build engine-vulkan-build dev test demo fuzz bundle bench-convert bench-runtime bench-server bench-engine bench-offload bench-merge export-lora-tool clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# one native build per configuration; `cmake --install` puts the bindings and the libraries
# into the venv, so pip never builds llama-cpp-python itself
$(ENGINE_STAMP): CMakeLists.txt $(wildcard cmake/*.cmake) $(wildcard cmake/patches/*.patch) | $(VENV)/bin/python
	cmake -S . -B $(ENGINE_BUILD) $(ENGINE_ARGS) -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build $(ENGINE_BUILD) --config Release -j $(JOBS)
	cmake --install $(ENGINE_BUILD) --config Release
	rm -f $(VENV)/.edge-lora-engine-*
	touch $@

engine: $(ENGINE_STAMP)

# the Vulkan engine the offload tests run on a software device (tests/test_offload.py, through
# LLAMA_CPP_LIB_PATH), not installed; built where the Vulkan build tools are (Debian: glslc
# libvulkan-dev spirv-headers), else the offload tests skip
VULKAN_BUILD := build/engine-vulkan-test
engine-vulkan-build: | $(VENV)/bin/python
	@if command -v glslc >/dev/null 2>&1 && pkg-config --exists vulkan 2>/dev/null; then \
	  cmake -S . -B $(VULKAN_BUILD) -DEDGE_LORA_BACKEND=vulkan -DEDGE_LORA_CPU=native -DPython3_EXECUTABLE=$(abspath $(PY)) && \
	  cmake --build $(VULKAN_BUILD) -j $(JOBS); \
	else echo "note: glslc or the Vulkan headers not found: the offload tests will skip (Debian: apt-get install glslc libvulkan-dev spirv-headers)"; fi

# a native CPU build (AMX off) beside the portable one, not installed: bench-engine's reference
engine-native-build: | $(VENV)/bin/python
	cmake -S . -B build/engine-bench-native -DEDGE_LORA_CPU=native -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build build/engine-bench-native -j $(JOBS)

# torch==2.13.0 first: the CPU build from this machine's disk (an unpinned torch pulls a CUDA build)
$(STAMP): pyproject.toml | $(ENGINE_STAMP)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# instructor 1.17 pins jiter<0.15, openai 3.57 needs >=0.16: installed without its pins (it runs
	# with the newer jiter: tests/test_client_instructor.py)
	$(PIP) install -q --no-deps instructor==1.17.0 docstring-parser==0.18.0
	touch $(STAMP)

dev: $(STAMP)

# the runtime and the demo's base only: no torch
$(DEMO_STAMP): pyproject.toml | $(ENGINE_STAMP)
	$(PIP) install -q -e '.[demo]'
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py

install: | $(ENGINE_STAMP)
	$(PIP) install -q -e .

# the desktop app as a one-folder app (PyInstaller), the portable engine inside
BUNDLE := build/bundle/dist/edge-lora-chat/edge-lora-chat
$(BUNDLE): $(wildcard examples/desktop_app/*.py) examples/desktop_app/edge-lora-chat.spec \
           $(shell find edge_lora -name '*.py') $(ENGINE_STAMP) | $(STAMP)
	$(VENV)/bin/pyinstaller --noconfirm --log-level WARN --distpath build/bundle/dist --workpath build/bundle/work \
	    examples/desktop_app/edge-lora-chat.spec
	@du -sh build/bundle/dist/edge-lora-chat

bundle: $(BUNDLE)

# engine-native-build: the portability tests show that a native build faults on older CPUs;
# the bundle: its test runs it in a clean environment and on an emulated Haswell
test: $(STAMP) engine-native-build engine-vulkan-build $(BUNDLE)
	@command -v qemu-x86_64 >/dev/null 2>&1 || echo "note: qemu-x86_64 not found: the portability tests will skip (Debian: apt-get install qemu-user)"
	$(PY) -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# a large fuzz campaign (tests/test_fuzz.py runs a bounded one); failing inputs are kept in fuzz-failures/
FUZZ_SEED ?= 1
fuzz: $(STAMP)
	$(PY) tests/fuzz_gguf.py --adapters 20000 --bases 5000 --seed $(FUZZ_SEED) --keep fuzz-failures

bench-convert: $(STAMP)
	$(PY) benchmarks/bench_convert.py

# llama.cpp's own llama-export-lora, from the same pinned sources, as bench-merge's reference
EXPORT_LORA_SRC = $(ENGINE_BUILD)/_src/llama_cpp_python-0.3.36/vendor/llama.cpp
export-lora-tool: $(ENGINE_STAMP)
	cmake -S $(EXPORT_LORA_SRC) -B build/export-lora -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TOOLS=ON \
	    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
	    -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF
	cmake --build build/export-lora --target llama-export-lora -j $(JOBS)

bench-merge: $(STAMP) export-lora-tool
	$(PY) benchmarks/bench_merge.py --export-lora build/export-lora/bin/llama-export-lora

bench-runtime: $(STAMP)
	$(PY) benchmarks/bench_runtime.py --base all

bench-server: $(STAMP)
	$(PY) benchmarks/bench_server.py

bench-engine: $(STAMP) engine-native-build
	$(PY) benchmarks/bench_engine.py --native build/engine-bench-native/bin

# GPU offload and op offload's cost on Mesa's lavapipe (the software Vulkan device .ci/lavapipe fetches)
bench-offload: $(STAMP) engine-vulkan-build
	eval "$$(.ci/lavapipe)" && $(PY) benchmarks/bench_offload.py --lib build/engine-vulkan-test/bin

clean:
	rm -rf $(VENV) build *.egg-info
