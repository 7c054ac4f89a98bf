"""Bytes on disk: GGUF headers and tensor data read in Python before any native code
(:mod:`.gguf_file`), value scans of tensor bits (:mod:`.values`), the GGUF adapter writer
(:mod:`.adapter_file`) and edge-lora's metadata keys (:mod:`.keys`). No engine, no torch,
no model-family knowledge."""
