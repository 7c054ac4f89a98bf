"""The native engine: llama.cpp and ggml as built by edge-lora's top-level CMakeLists.txt.

- :mod:`.native`: the one module that calls llama.cpp/ggml (models, adapters, contexts,
  samplers, backends and devices, ggml's quantizer);
- :mod:`.cpu`: this machine's CPU features, read without native code;
- :mod:`.tiny`: a tiny quantized llama model, adapter and NumPy reference for the smoke test;
- :mod:`.probe`: the child-process probe (devices, loaded libraries, smoke test);
- :mod:`.check`: the once-per-build-and-CPU smoke-test verdict the runtime relies on;
- :mod:`.doctor`: ``edge-lora doctor``'s report (build, devices, smoke test, the fix);
- :mod:`.summary`: the one-line engine description (``edge_lora.engine_summary()``).
"""
