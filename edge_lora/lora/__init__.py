"""The in-memory LoRA model: what an adapter *is*, and its maths in one place.

- :mod:`.scales`: the scale rules (PEFT, rsLoRA, MLX-LM, llama.cpp), one function each;
- :mod:`.adapter`: GGUF adapters read into memory (:class:`~.adapter.LoraSource`) and written back;
- :mod:`.dora`: DoRA's merge rule;
- :mod:`.compat`: an adapter against a base, every reason llama.cpp would refuse it.
"""
