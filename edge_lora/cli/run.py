"""``edge-lora run`` and ``edge-lora chat``: generate over one base with adapters."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .common import (
    add_chat_template_flag, add_sampling_flags, add_speculative_flags, parse_adapter_spec, parse_template_kwargs, parse_use, read_flag_file,
    sampling_options, speculative_setting,
)

if TYPE_CHECKING:  # the runtime loads the native engine: imported when a command runs
    from ..runtime.runtime import Runtime

RUN_HELP = "generate once from a prompt, with any mix of adapters"
RUN_EPILOG = """examples:
  edge-lora run base.gguf -p "Write a haiku about rain"
  edge-lora run base.gguf --adapter sql=sql.gguf -p "orders from 2024" --temp 0
  edge-lora run base.gguf --adapter sql=sql.gguf:0.7 --adapter tone=tone.gguf:0.5 -p "..." --json
  edge-lora run base.gguf --adapter json=json.gguf -p "..." --json-schema person.schema.json

Each --adapter is loaded and applied at its SCALE (default 1.0). Without --raw
the prompt is a user message formatted with the base's chat template."""

CHAT_HELP = "interactive streaming chat; switch adapters live with /use"
CHAT_EPILOG = """commands inside the chat:
  /adapters              list loaded adapters and the active mix
  /use NAME[:SCALE] ...  apply these adapters (replaces the active mix)
  /base                  the base model alone
  /reset                 forget the conversation
  /help                  this list
  /quit                  leave (also Ctrl-D)

Works with stdin piped: one user message per line."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", metavar="BASE.gguf", help="GGUF base model (any quantization)")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH[:SCALE]",
                   help="load a GGUF LoRA adapter (repeatable)")
    add_sampling_flags(p)
    p.add_argument("--n-ctx", type=int, default=4096, metavar="N", help="context length (default 4096)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: all cores)")
    p.add_argument("--gpu-layers", type=int, default=0, metavar="N",
                   help="layers to offload to the GPU (CUDA, Metal, Vulkan; -1: all)")
    p.add_argument("--no-op-offload", action="store_true",
                   help="compute layers kept on the CPU there, also for long prompts (llama.cpp's op offload off)")
    add_chat_template_flag(p)
    add_speculative_flags(p)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    run = sub.add_parser("run", help=RUN_HELP, description=RUN_HELP, epilog=RUN_EPILOG, formatter_class=fmt)
    _common(run)
    run.add_argument("-p", "--prompt", required=True)
    run.add_argument("--raw", action="store_true", help="complete the prompt as plain text (no chat template)")
    run.add_argument("--json", action="store_true", help="print one JSON object with text, counts and timings")
    shape = run.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", metavar="FILE", default=None,
                       help="the output matches this JSON schema (constrained decoding)")
    shape.add_argument("--grammar", metavar="FILE", default=None, help="the output matches this GBNF grammar")
    run.set_defaults(func=cmd_run)
    chat = sub.add_parser("chat", help=CHAT_HELP, description=CHAT_HELP, epilog=CHAT_EPILOG, formatter_class=fmt)
    _common(chat)
    chat.add_argument("--system", default=None, help="a system message to start the conversation")
    chat.set_defaults(func=cmd_chat)


def _open(args: argparse.Namespace) -> tuple[Runtime, dict[str, float]]:
    specs = [parse_adapter_spec(s) for s in args.adapter]
    template = read_flag_file("--chat-template-file", args.chat_template_file)
    kwargs, per_adapter = parse_template_kwargs(args.chat_template_kwargs, [n for n, _, _ in specs])
    from ..runtime.runtime import Runtime

    rt = Runtime(args.base, n_ctx=args.n_ctx, n_threads=args.threads, n_gpu_layers=args.gpu_layers,
                 op_offload=not args.no_op_offload, chat_template=template, template_kwargs=kwargs,
                 speculative=speculative_setting(args))
    try:
        for name, path, scale in specs:
            rt.load_adapter(name, path, scale, template_kwargs=per_adapter.get(name))
    except Exception:
        rt.close()
        raise
    return rt, {name: scale for name, _, scale in specs}


def _structured(args: argparse.Namespace) -> dict[str, Any]:
    """``json_schema`` or ``grammar`` from the file a flag names (read before the base is loaded)."""
    for flag, key in (("--json-schema", "json_schema"), ("--grammar", "grammar")):
        text = read_flag_file(flag, getattr(args, key))
        if text is None:
            continue
        if key == "json_schema":
            from ..runtime.grammar import Grammar

            return {"grammar": Grammar.from_json_schema(text, param=flag)}
        return {"grammar": text}
    return {}


def cmd_run(args: argparse.Namespace) -> int:
    structured = _structured(args)
    rt, mix = _open(args)
    with rt:
        options = {**sampling_options(args), **structured}
        if args.raw:
            stream = rt.stream(args.prompt, mix, **options)
        else:
            stream = rt.chat_stream([{"role": "user", "content": args.prompt}], mix, **options)
        for piece in stream:
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        c = stream.result
        assert c is not None
        if args.json:
            print(json.dumps({
                "text": c.text, "finish_reason": c.finish_reason, "adapters": c.adapters,
                "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                "ttft_ms": round(c.timings.ttft_ms, 2), "total_ms": round(c.timings.total_ms, 2),
                "tokens_per_second": round(c.tokens_per_second, 2),
                **({"draft_tokens": c.draft_tokens, "draft_accepted": c.draft_accepted} if rt.speculative else {}),
            }, ensure_ascii=False))
        else:
            print()
    return 0


def _mix_text(mix: dict[str, float]) -> str:
    return ", ".join(f"{n}:{s:g}" for n, s in mix.items()) or "base"


def cmd_chat(args: argparse.Namespace) -> int:
    rt, mix = _open(args)
    interactive = sys.stdin.isatty()
    with rt:
        system = [{"role": "system", "content": args.system}] if args.system else []
        session = rt.session(mix, messages=system, **sampling_options(args))
        if interactive:
            print(f"edge-lora chat: {rt.model_path.name}, adapters: {_mix_text(mix)}. /help for commands.")
        while True:
            if interactive:
                sys.stdout.write("> ")
                sys.stdout.flush()
            line = sys.stdin.readline()
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not _command(line, rt, session, system):
                    break
                continue
            for piece in session.stream(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    return 0


def _command(line: str, rt: Runtime, session: Any, system: list[dict[str, str]]) -> bool:
    cmd, *words = line.split()
    if cmd == "/quit":
        return False
    if cmd == "/help":
        print(CHAT_EPILOG.split("\n\n")[0])
    elif cmd == "/adapters":
        for name, info in rt.adapters.items():
            print(f"  {name}: {info.path} (ranks {info.ranks}, alpha {info.alpha:g}, default scale {info.scale:g})")
        print(f"  active: {_mix_text(session.adapters)}")
    elif cmd == "/use":
        try:
            session.use(parse_use(words))
        except Exception as exc:  # an unknown name or bad scale: say so and go on
            print(f"error: {exc}")
        print(f"active: {_mix_text(session.adapters)}")
    elif cmd == "/base":
        session.use({})
        print("active: base")
    elif cmd == "/reset":
        session.reset(system)
        print("conversation cleared")
    else:
        print(f"unknown command {cmd}; /help lists them")
    return True
