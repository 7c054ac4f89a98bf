"""Metadata keys edge-lora writes into GGUF files, beside gguf-py's own ``gguf.Keys``."""

from __future__ import annotations


class EdgeLoraKeys:
    """Provenance keys edge-lora writes into adapters (beside gguf's own ``Keys``)."""

    SOURCE_FORMAT = "edge_lora.source_format"
    BASE_MODEL = "edge_lora.base_model"
    TARGET_MODULES = "edge_lora.target_modules"
    RANKS = "edge_lora.ranks"
    CONVERTER_VERSION = "edge_lora.converter_version"
    PEFT_VERSION = "edge_lora.peft_version"
    WEIGHTS_FILE = "edge_lora.weights_file"
    WEIGHTS_DTYPES = "edge_lora.weights_dtypes"
    SCALES_FOLDED = "edge_lora.scales_folded"
    CHECKED_AGAINST_BASE = "edge_lora.checked_against_base"
    TEXT_ONLY = "edge_lora.text_only"  # the vision/audio towers of a multimodal checkpoint were dropped
    # models made by `edge-lora merge`: one JSON object per adapter (name, scale, sha256, format, dora)
    MERGED_ADAPTERS = "edge_lora.merged_adapters"
    MERGE_OUTTYPE = "edge_lora.merge_outtype"
    MERGE_REQUANT = "edge_lora.merge_requant"  # gptq or nearest
    MERGED_BY = "edge_lora.merged_by"


class CombineKeys:
    """Provenance keys of a combined adapter (beside :class:`EdgeLoraKeys`)."""

    #: array of JSON strings ``{"name", "scale", "sha256"}``, one per input, in order
    COMBINED_FROM = "edge_lora.combined_from"
    #: ``"cat"`` or ``"svd"``
    METHOD = "edge_lora.combine_method"
    #: svd only: the requested rank R
    RANK = "edge_lora.combine_rank"
    #: svd only: the worst per-tensor relative Frobenius error ``||D - D_R|| / ||D||``
    MAX_REL_ERROR = "edge_lora.combine_max_rel_error"
