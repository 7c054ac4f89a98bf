"""Convert speed: a large synthetic PEFT adapter, against a plain copy of the same bytes.

Builds (once, under .cache/bench/) a rank-64 PEFT adapter on every linear layer of a
Llama-3-8B-shaped layout (4096 wide, 32 layers, GQA 32/8, ffn 14336) stored in bf16,
and a *sparse* Q4_K GGUF base of that shape (header and tensor table real, data
holes), so the conversion is fully checked against a base without an 8B download.
Then it times, interleaved in one run: copying the safetensors file, and
``edge-lora convert --base ... --outtype f16``. Prints MB/s and the ratio.

    python benchmarks/bench_convert.py [--rank 64] [--layers 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES

HIDDEN, N_HEAD, N_KV, HEAD_DIM, FFN, VOCAB = 4096, 32, 8, 128, 14336, 128256
MODULES = {
    "self_attn.q_proj": (N_HEAD * HEAD_DIM, HIDDEN, "attn_q"),
    "self_attn.k_proj": (N_KV * HEAD_DIM, HIDDEN, "attn_k"),
    "self_attn.v_proj": (N_KV * HEAD_DIM, HIDDEN, "attn_v"),
    "self_attn.o_proj": (HIDDEN, N_HEAD * HEAD_DIM, "attn_output"),
    "mlp.gate_proj": (FFN, HIDDEN, "ffn_gate"),
    "mlp.up_proj": (FFN, HIDDEN, "ffn_up"),
    "mlp.down_proj": (HIDDEN, FFN, "ffn_down"),
}


def write_adapter(d: Path, rank: int, layers: int) -> None:
    """A PEFT adapter directory, bf16 safetensors, written without torch."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    chunks: list[bytes] = []
    offset = 0
    for i in range(layers):
        for mod, (out_f, in_f, _) in MODULES.items():
            for part, shape in (("lora_A", (rank, in_f)), ("lora_B", (out_f, rank))):
                f32 = rng.standard_normal(shape, dtype=np.float32) * 0.02
                raw = (f32.view(np.uint32) >> 16).astype(np.uint16).tobytes()
                name = f"base_model.model.model.layers.{i}.{mod}.{part}.weight"
                header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
                chunks.append(raw)
                offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(d / "adapter_model.safetensors", "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for c in chunks:
            f.write(c)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": [m.split(".")[-1] for m in MODULES],
           "base_model_name_or_path": "synthetic/llama-3-8b-shape", "bias": "none", "use_rslora": False}
    (d / "adapter_config.json").write_text(json.dumps(cfg))


def write_sparse_base(path: Path, layers: int) -> None:
    """A llama GGUF base with the real header and tensor table; the data is a sparse hole."""
    w = GGUFWriter(path, "llama")
    w.add_block_count(layers)
    w.add_context_length(8192)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_KV)
    w.add_layer_norm_rms_eps(1e-5)
    q = GGMLQuantizationType.Q4_K
    block, size = GGML_QUANT_SIZES[q]

    def info(name: str, shape: tuple[int, int]) -> None:
        nbytes = shape[0] * shape[1] // block * size
        w.add_tensor_info(name, (shape[0], shape[1] // block * size), np.dtype(np.uint8), nbytes, raw_dtype=q)

    info("token_embd.weight", (VOCAB, HIDDEN))
    for i in range(layers):
        for out_f, in_f, gname in MODULES.values():
            info(f"blk.{i}.{gname}.weight", (out_f, in_f))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    total = w.fout[0].tell() + sum(ti.nbytes + (-ti.nbytes % 32) for ti in w.tensors[0].values()) + 64
    w.close()
    with open(path, "r+b") as f:
        f.truncate(total)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(".cache/bench"))
    args = ap.parse_args()
    wd = args.workdir / f"r{args.rank}-l{args.layers}"
    adapter, base = wd / "adapter", wd / "base-sparse.gguf"
    if not (adapter / "adapter_model.safetensors").exists():
        write_adapter(adapter, args.rank, args.layers)
    if not base.exists():
        write_sparse_base(base, args.layers)
    src = adapter / "adapter_model.safetensors"
    size_mb = src.stat().st_size / 1e6
    out, copy_dst = wd / "out.gguf", wd / "copy.bin"
    cmd = [sys.executable, "-m", "edge_lora.cli", "convert", str(adapter), "--base", str(base),
           "-o", str(out), "--outtype", "f16", "--force", "-q"]
    copies, converts = [], []
    for _ in range(args.repeats):
        copies.append(timed(lambda: shutil.copyfile(src, copy_dst)))
        converts.append(timed(lambda: subprocess.run(cmd, check=True)))
    copy_s, conv_s = statistics.median(copies), statistics.median(converts)
    print(f"adapter: rank {args.rank}, {args.layers} layers x {len(MODULES)} modules, {size_mb:.0f} MB bf16 safetensors")
    print(f"output : {out.stat().st_size / 1e6:.0f} MB f16 GGUF (checked against a {len(MODULES) * args.layers + 1}-tensor Q4_K base table)")
    print("| step | median s | MB/s (input) | ratio to copy |")
    print("|---|---|---|---|")
    print(f"| plain copy of the safetensors file | {copy_s:.2f} | {size_mb / copy_s:.0f} | 1.0 |")
    print(f"| edge-lora convert (process start included) | {conv_s:.2f} | {size_mb / conv_s:.0f} | {conv_s / copy_s:.1f} |")
    copy_dst.unlink(missing_ok=True)
    checks_table(src, out, args.repeats)
    return 0


def checks_table(src: Path, out: Path, repeats: int) -> None:
    """The cost of the finiteness checks (NaN/Inf and values beyond the f16 range): on the
    checkpoint's tensors in convert, and on the GGUF adapter's data as the runtime loads it."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from edge_lora.formats.values import nonfinite_tensors
    from edge_lora.formats.gguf_file import read_gguf
    from edge_lora_convert.checkpoint import nonfinite_problems
    from edge_lora_convert.tensors import read_safetensors

    tensors = read_safetensors(src)
    info = read_gguf(out)
    conv = statistics.median(timed(lambda: nonfinite_problems(tensors)) for _ in range(repeats))
    load = statistics.median(timed(lambda: nonfinite_tensors(info)) for _ in range(repeats))
    mb_in, mb_out = src.stat().st_size / 1e6, out.stat().st_size / 1e6
    print("\n| finiteness check | data | median s | MB/s |")
    print("|---|---|---|---|")
    print(f"| convert: checkpoint tensors (decoded f32) | {mb_in:.0f} MB bf16 | {conv:.3f} | {mb_in / conv:.0f} |")
    print(f"| load_adapter / inspect: GGUF tensor bits | {mb_out:.0f} MB f16 | {load:.3f} | {mb_out / load:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
