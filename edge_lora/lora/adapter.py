"""A LoRA adapter in memory: base tensor names to :class:`~.pair.LoraPair`, plus provenance.

A :class:`LoraSource` maps base tensor names (``blk.0.attn_q.weight``) to
:class:`~.pair.LoraPair` factors in GGUF adapter layout, with the effective scale of each
tensor already worked out. Merge, combine and export all read adapters into this form. GGUF adapters are read here (:func:`read_gguf_lora`);
PEFT/MLX checkpoints, DoRA included, are read by the converter
(``edge_lora_convert.merge_source.lora_source``), which returns the same type.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, Keys
from gguf.quants import dequantize

from .compat import adapter_problems, invocation_tokens, lora_pairs
from .pair import LoraPair, layout_for
from .scales import llama_cpp_scale
from ..errors import IncompatibleAdapterError, InvalidRequestError
from ..formats.adapter_file import pair_tensors, write_adapter
from ..formats.gguf_file import (
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    GGUFInfo,
    TensorInfo,
    read_gguf,
    require_adapter,
    tensor_data,
)


@dataclass(frozen=True)
class LoraSource:
    """An adapter ready to merge: ``weights`` by base tensor name.

    ``label`` names it in messages and provenance (``json.gguf:0.5``); ``sha256`` is of the
    adapter's weights file; ``user_scale`` is what the user asked for (already inside each
    weight's ``scale``)."""

    label: str
    path: Path
    arch: str
    sha256: str
    user_scale: float
    weights: dict[str, LoraPair] = field(repr=False)
    source_format: str = "gguf"
    #: an activated LoRA's invocation tokens (it acts only from them on); () for a plain LoRA
    invocation_tokens: tuple[int, ...] = ()
    #: its token_embd LoRA was trained tied to the output too (PEFT ensure_weight_tying, MLX-LM's
    #: as_linear): on a tied base it merges into token_embd, which is the output as well
    ties_output: bool = False

    def alora_problem(self, what: str) -> str | None:
        """Why an aLoRA cannot be ``what`` (merged, combined): its weights act only from its
        invocation on, which a weight change applied to every token cannot express."""
        if not self.invocation_tokens:
            return None
        return (f"{self.label}: an activated LoRA (aLoRA, invocation tokens {list(self.invocation_tokens)}) acts only "
                f"from its invocation on; {what} it would apply it to every token (PEFT refuses to merge aLoRA too): "
                "load it at run time instead (edge-lora run/serve --lora)")

    @property
    def is_dora(self) -> bool:
        return any(w.magnitude is not None for w in self.weights.values())

    def scaled(self, user_scale: float) -> LoraSource:
        """The same adapter at another user scale (a multiple of the one it was read at)."""
        if not math.isfinite(user_scale):
            raise InvalidRequestError(f"{self.label}: scale {user_scale!r} is not a finite number")
        if self.user_scale == 0:
            raise InvalidRequestError(f"{self.label}: read at scale 0, it cannot be rescaled")
        k = user_scale / self.user_scale
        return replace(self, user_scale=user_scale, weights={n: w.scaled(k) for n, w in self.weights.items()})


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_tensor_f32(data: np.ndarray, t: TensorInfo) -> np.ndarray:
    """Tensor ``t`` of a GGUF file (``data``: the file as uint8, e.g. ``np.memmap``), dequantized
    to float32 in numpy order by gguf-py's dequantizers (checked bit-exact against libggml by
    gguf-py's own tests)."""
    return dequantize_tensor(tensor_data(data, t), GGMLQuantizationType[t.type_name]).reshape(t.shape)


def dequantize_tensor(data: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    if ggml_type == GGMLQuantizationType.F32:
        return np.array(data, dtype=np.float32)
    return np.asarray(dequantize(data, ggml_type), dtype=np.float32)


def read_gguf_lora(path: str | os.PathLike[str], *, scale: float = 1.0, base: GGUFInfo | None = None,
                   label: str | None = None, archs: Collection[str] = ()) -> LoraSource:
    """Read a GGUF LoRA adapter into a :class:`LoraSource` at user scale ``scale``.

    Every problem llama.cpp would refuse the adapter for (on ``base`` when given), and any
    NaN or infinite value, is raised at once as :class:`IncompatibleAdapterError`; a base model
    given as the adapter is :class:`GGUFFileError`."""
    if not math.isfinite(scale):
        raise InvalidRequestError(f"{path}: scale {scale!r} is not a finite number")
    info = require_adapter(read_gguf(path))
    problems = adapter_problems(info, base, archs=archs)
    if problems:
        where = f" with the base {base.path.name}" if base is not None else ""
        raise IncompatibleAdapterError(f"{info.path}: cannot be used{where}", problems)
    alpha = float(info.metadata.get(Keys.Adapter.LORA_ALPHA, 0.0))
    pairs, _ = lora_pairs(info)
    data = np.memmap(info.path, dtype=np.uint8, mode="r")
    weights: dict[str, LoraPair] = {}
    for name in sorted(pairs):
        a = read_tensor_f32(data, info.tensors[name + LORA_A_SUFFIX])
        b = read_tensor_f32(data, info.tensors[name + LORA_B_SUFFIX])
        weights[name] = LoraPair(a, b, llama_cpp_scale(alpha, int(b.shape[-1]), scale), layout_for(name, a.ndim))
    return LoraSource(label=label or f"{info.path.name}:{scale:g}", path=info.path, arch=info.architecture,
                      sha256=file_sha256(info.path), user_scale=scale, weights=weights,
                      invocation_tokens=invocation_tokens(info))


def write_gguf_lora(src: LoraSource, path: str | os.PathLike[str]) -> None:
    """Write ``src``'s LoRA part (not DoRA's magnitudes) as an f32 GGUF adapter llama.cpp can
    load hot at scale 1.0: alpha 0 (llama.cpp's scale is then the user's scale alone), each
    tensor's effective scale folded into its B. Used to run an adapter as it will be merged."""
    write_adapter(Path(path), src.arch, 0.0, pair_tensors({n: w.folded() for n, w in src.weights.items()}), "f32", {},
                  progress=False)
