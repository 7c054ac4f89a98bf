"""Build PEFT and MLX-LM adapters with random, non-zero factors on tiny models, offline."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file, save_file

# Linear layer names per case, as transformers names them
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP = ["gate_proj", "up_proj", "down_proj"]
FUSED = {"phi3": (["qkv_proj", "o_proj"], ["gate_up_proj", "down_proj"]), "glm4": (ATTN, ["gate_up_proj", "down_proj"]),
         "mixtral": (ATTN, ["w1", "w3", "w2"]),
         "lfm2": (["q_proj", "k_proj", "v_proj", "out_proj", "in_proj"], ["w1", "w3", "w2"]),
         "gptoss": (ATTN, []),
         "lfm2moe": (["q_proj", "k_proj", "v_proj", "out_proj", "in_proj"], ["w1", "w3", "w2"]),
         "granitehybrid": (["q_proj", "k_proj", "v_proj", "o_proj", "in_proj"], ["out_proj", "input_linear", "output_linear"]),
         "granite4": (ATTN, ["input_linear", "output_linear"])}  # its experts are fused parameters only (target_parameters: test_moe.py)


#: modules PEFT's "all-linear" reaches that llama.cpp multiplies without LoRA (refused by name)
NO_LORA = {"gemma4": ["per_layer_model_projection"], "gemma4moe": ["per_layer_model_projection"],
           "gemma3n": ["per_layer_model_projection", "modality_router", r"altup_projections.0", "altup_projections.1",
                       "altup_projections.2", "altup_unembed_projections.0", "altup_unembed_projections.1",
                       "altup_unembed_projections.2"]}


def all_linear(case: str) -> dict:
    """PEFT's ``target_modules="all-linear"`` for ``case``, less the modules llama.cpp cannot adapt."""
    return dict(target_modules="all-linear", exclude_modules=NO_LORA.get(case))


def linear_names(case: str) -> list[str]:
    attn, mlp = FUSED.get(case, (ATTN, MLP))
    return attn + mlp


def randomize_lora(model: torch.nn.Module, seed: int, b_std: float = 0.5) -> None:
    """PEFT initialises B to zero; give both factors random values so the delta is real."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" not in name:
                continue
            fan = p.shape[1] if p.ndim == 2 else 1
            std = (b_std if ("lora_B" in name or "lora_embedding_B" in name) else 1.0) / np.sqrt(fan)
            p.copy_(torch.randn(p.shape, generator=g) * std)


def round_lora_to(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Round the factors to the storage dtype, so the float32 reference uses the stored values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(p.to(dtype).to(torch.float32))


def make_peft_adapter(
    base_model: torch.nn.Module,
    out_dir: Path,
    config: dict[str, Any],
    *,
    seed: int = 1,
    storage: str = "safetensors",  # or "bin", "bf16", "f16"
) -> torch.nn.Module:
    """Save a PEFT adapter with random factors; return the PEFT model (the reference)."""
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, **config)
    model = get_peft_model(copy.deepcopy(base_model), cfg)
    randomize_lora(model, seed)
    if storage in ("bf16", "f16"):
        round_lora_to(model, getattr(torch, {"bf16": "bfloat16", "f16": "float16"}[storage]))
    model.eval()
    # the vocabulary is not resized, so the embedding base layer need not be saved
    model.save_pretrained(out_dir, safe_serialization=storage != "bin", save_embedding_layers=False)
    if storage in ("bf16", "f16"):
        path = out_dir / "adapter_model.safetensors"
        dtype = torch.bfloat16 if storage == "bf16" else torch.float16
        tensors = {k: v.to(dtype) for k, v in load_file(path).items()}
        save_file(tensors, path, metadata={"format": "pt"})
    return model


def peft_logits(model: torch.nn.Module, tokens: list[int], scale: float | None = None) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float().numpy()


def edit_adapter(out_dir: Path, fn) -> None:
    """Rewrite an adapter's safetensors through ``fn(dict) -> dict`` (for refusal tests)."""
    path = out_dir / "adapter_model.safetensors"
    tensors = fn({k: v.clone() for k, v in load_file(path).items()})
    save_file(tensors, path, metadata={"format": "pt"})


def edit_config(out_dir: Path, **changes: Any) -> None:
    path = out_dir / "adapter_config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def make_mlx_adapter(
    base_model: torch.nn.Module, out_dir: Path, keys: list[str], *, rank: int, scale: float, num_layers: int, seed: int = 3
) -> torch.nn.Module:
    """Write an MLX-LM adapter (lora_a (in, r), lora_b (r, out), direct scale on the last
    ``num_layers`` layers) and return a copy of the model with ``W + scale * (a @ b).T`` merged:
    MLX-LM's own formula, the reference."""
    g = torch.Generator().manual_seed(seed)
    ref = copy.deepcopy(base_model)
    layers = ref.model.layers
    n = len(layers)
    tensors: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for i in range(n - num_layers, n):
            for key in keys:
                lin = layers[i].get_submodule(key)
                out_f, in_f = lin.weight.shape
                a = torch.randn(in_f, rank, generator=g) / np.sqrt(in_f)
                b = torch.randn(rank, out_f, generator=g) * 0.5 / np.sqrt(rank)
                lin.weight += scale * (a @ b).T
                prefix = f"model.layers.{i}.{key}"
                tensors[prefix + ".lora_a"] = a.numpy()
                tensors[prefix + ".lora_b"] = b.numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    save_np(tensors, str(out_dir / "adapters.safetensors"))
    cfg = {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": keys},
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg))
    ref.eval()
    return ref


def peft_mix(base_model: torch.nn.Module, adapters: dict[str, tuple[Path, float]]) -> torch.nn.Module:
    """transformers + PEFT with several saved adapters active at once, each at its own scale."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    names = list(adapters)
    first = names[0]
    model = PeftModel.from_pretrained(copy.deepcopy(base_model), adapters[first][0], adapter_name=first)
    for name in names[1:]:
        model.load_adapter(adapters[name][0], adapter_name=name)
    model.base_model.set_adapter(names)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in names:
                if name in module.scaling:
                    module.scaling[name] *= adapters[name][1]
    model.eval()
    return model


#: transformers 4's per-expert module names, by case: (experts module under a layer, gate, up, down)
PER_EXPERT_NAMES = {"mixtral": ("block_sparse_moe.experts", "w1", "w3", "w2")}


def per_expert_save(src: Path, dst: Path, case: str, n_experts: int, hidden: int,
                    keep_experts: set[int] | None = None) -> None:
    """Rewrite a PEFT ``target_parameters`` save of transformers 5's fused experts
    (``mlp.experts.gate_up_proj``, ``mlp.experts.down_proj``) as transformers 4 saved it: one
    linear LoRA per expert and projection (``mlp.experts.E.gate_proj.lora_A.weight``), with
    ``target_modules`` naming them, as PEFT's own layout rules give (``lora.ParamWrapper``:
    ``A.reshape(E, r, in)``, ``B.reshape(out, r, E)``; gate rows first), from a save with one
    rank (explicit ``target_parameters``, no rank_pattern on them). ``keep_experts`` drops
    the others' LoRA. PEFT loads the result onto the transformers 5 model again
    (``peft.utils.transformers_weight_conversion``), which is the reference for such saves."""
    experts, gate, up, down = PER_EXPERT_NAMES.get(case, ("mlp.experts", "gate_proj", "up_proj", "down_proj"))
    tensors = load_file(src / "adapter_model.safetensors")
    cfg = json.loads((src / "adapter_config.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for key, v in tensors.items():
        if ".mlp.experts." not in key:
            out[key] = v
            continue
        layer = key.split(".mlp.experts.")[0]
        side = "lora_A" if ".lora_A." in key else "lora_B"
        a_key = key.replace("lora_B", "lora_A")
        fused = tensors[a_key].shape[1] == hidden  # gate_up_proj's A faces the hidden state (PEFT 0.21)
        r = tensors[a_key].shape[0] // n_experts
        projs = [gate, up] if fused else [down]
        for e in range(n_experts):
            if keep_experts is not None and e not in keep_experts:
                continue
            if side == "lora_A":
                parts = [v.reshape(n_experts, r, -1)[e]] * len(projs)
            else:
                b = v.reshape(v.shape[0], r, n_experts)[:, :, e]
                parts = list(b.chunk(len(projs), dim=0))
            for proj, part in zip(projs, parts):
                out[f"{layer}.{experts}.{e}.{proj}.{side}.weight"] = part.contiguous().clone()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, dst / "adapter_model.safetensors", metadata={"format": "pt"})
    cfg["target_modules"] = sorted(set(cfg.get("target_modules") or []) | {gate, up, down})
    # 2-D parameters (a router's weight) stay targeted as such
    cfg["target_parameters"] = [p for p in cfg.get("target_parameters") or [] if p.endswith(".weight")] or None
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
