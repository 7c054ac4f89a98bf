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


def test_a_probe_that_times_out_on_a_gpu_build_says_to_run_again(monkeypatch):
    """A GPU driver compiles its shaders on the first run (many minutes on lavapipe) and keeps
    them: a timeout there is not a broken build, and the fix says so; on a CPU build it is."""
    from edge_lora.engine import check

    timeout = check.ProbeResult(False, f"{check.TIMEOUT_REASON} 1800 s")
    monkeypatch.setattr(check, "gpu_build", lambda directory=None: True)
    what, fix = check.failure_message(timeout)
    assert what.startswith(check.TIMEOUT_REASON) and fix == check.FIX_SLOW_DEVICE and "run it again" in fix
    assert not check.definitive(timeout)  # not cached: the next Runtime tries again
    wrong = check.ProbeResult(False, "the smoke test computed wrong numbers: x", {"offload_device": "Vulkan0: llvmpipe"})
    what, fix = check.failure_message(wrong)
    assert "Vulkan0: llvmpipe" in what and fix == check.FIX_DEVICE
    monkeypatch.setattr(check, "gpu_build", lambda directory=None: False)
    assert check.failure_message(timeout)[1] == check.FIX
    assert check.probe_timeout() == 300.0


def test_the_device_settings_are_part_of_the_verdicts_key(monkeypatch):
    from edge_lora.engine import check

    monkeypatch.setenv("LP_NATIVE_VECTOR_WIDTH", "128")
    with_128 = check.driver_signature()
    monkeypatch.setenv("LP_NATIVE_VECTOR_WIDTH", "256")
    assert check.driver_signature() != with_128
