"""Whether layers asked to go to a GPU have a device to go to, and why not.

llama.cpp offloads ``n_gpu_layers`` to the devices its GPU backends list; with none it runs
every layer on the CPU without a word. Two causes are common: an engine built for the CPU
only, and the Vulkan backend skipping CPU-type devices (software rasterizers such as Mesa's
lavapipe) unless ``GGML_VK_VISIBLE_DEVICES`` names them (``ggml-vulkan.cpp``,
``ggml_vk_instance_init``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no native import here: the doctor reads the probe child's devices with it
    from .native import Device

#: device kinds llama.cpp offloads layers to (ggml_backend_dev_type: GPU, IGPU, ACCEL)
OFFLOAD_KINDS = ("gpu", "igpu", "accel")
VK_VISIBLE = "GGML_VK_VISIBLE_DEVICES"


def offload_devices(devices: Sequence[Device]) -> list[Device]:
    return [d for d in devices if d.kind in OFFLOAD_KINDS]


def skipped_devices_note(backends: Sequence[str], devices: Sequence[Device],
                         env: Mapping[str, str] | None = None) -> str | None:
    """Why a loaded GPU backend lists no device, when the reason is known (doctor shows it)."""
    env = os.environ if env is None else env
    if "Vulkan" in backends and not any(d.backend == "Vulkan" for d in devices) and VK_VISIBLE not in env:
        return (f"the Vulkan backend lists no device: llama.cpp skips CPU-type Vulkan devices (software ones such "
                f"as Mesa's lavapipe) unless {VK_VISIBLE} names them ({VK_VISIBLE}=0 for the first)")
    return None


def no_device_problem(n_gpu_layers: int, backends: Sequence[str], devices: Sequence[Device],
                      env: Mapping[str, str] | None = None) -> str | None:
    """Why ``n_gpu_layers`` layers cannot be offloaded here (None when they can, or none are asked)."""
    if n_gpu_layers == 0 or offload_devices(devices):
        return None
    what = f"n_gpu_layers={n_gpu_layers} asks for GPU offload, but llama.cpp sees no GPU device"
    note = skipped_devices_note(backends, devices, env)
    if note:
        return f"{what}: {note}"
    gpu_backends = [b for b in backends if b not in ("CPU", "BLAS", "RPC")]
    if not gpu_backends:
        return (f"{what}: this engine is built for the CPU only (backends {', '.join(backends) or 'none'}); rebuild "
                "it with `make engine BACKEND=cuda` (or metal, vulkan), or pass n_gpu_layers=0")
    return (f"{what}: the {', '.join(gpu_backends)} backend is loaded but found no device (is the driver installed? "
            "`edge-lora doctor` lists what llama.cpp sees); or pass n_gpu_layers=0")
