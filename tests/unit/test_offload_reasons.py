"""offload.no_device_problem / skipped_devices_note: GPU offload asked for with no device is
never silent, and the reason is the right one."""

from __future__ import annotations

from edge_lora.engine.native import Device
from edge_lora.engine.offload import no_device_problem, skipped_devices_note

CPU = Device("CPU", "CPU", "AMD EPYC", "cpu", 0, 0)
LVP = Device("Vulkan", "Vulkan0", "llvmpipe (LLVM 15.0.6, 256 bits)", "gpu", 2 << 30, 2 << 30)


def test_no_layers_asked_or_a_device_there_is_no_problem():
    assert no_device_problem(0, ["CPU"], [CPU]) is None
    assert no_device_problem(-1, ["Vulkan", "CPU"], [LVP, CPU], env={"GGML_VK_VISIBLE_DEVICES": "0"}) is None


def test_a_cpu_only_engine_says_so_and_the_fix():
    p = no_device_problem(-1, ["CPU"], [CPU], env={})
    assert "n_gpu_layers=-1" in p and "built for the CPU only" in p and "make engine BACKEND=cuda" in p


def test_a_skipped_software_vulkan_device_names_the_variable():
    p = no_device_problem(8, ["Vulkan", "CPU"], [CPU], env={})
    assert "skips CPU-type Vulkan devices" in p and "GGML_VK_VISIBLE_DEVICES=0" in p
    assert skipped_devices_note(["Vulkan", "CPU"], [CPU], env={}) is not None
    # the variable set and still no device: the driver, not the skip
    p = no_device_problem(8, ["Vulkan", "CPU"], [CPU], env={"GGML_VK_VISIBLE_DEVICES": "0"})
    assert "the Vulkan backend is loaded but found no device" in p and "driver" in p
    assert skipped_devices_note(["Vulkan", "CPU"], [LVP, CPU], env={}) is None
