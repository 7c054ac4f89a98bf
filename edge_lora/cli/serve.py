"""``edge-lora serve``: the OpenAI-compatible local server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .common import (
    add_chat_template_flag, add_speculative_flags, parse_adapter_spec, parse_template_kwargs, read_flag_file,
    speculative_setting,
)
from ..errors import InvalidRequestError, MissingDependencyError

HELP = "OpenAI-compatible local server: the base and each adapter are models"
EPILOG = """examples:
  edge-lora serve base.gguf --adapter sql=sql.gguf --adapter tone=tone.gguf
  edge-lora serve base.gguf --adapter-dir ./adapters --api-key s3cret --parallel 2

  curl localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "sql", "messages": [{"role": "user", "content": "orders in 2024"}]}'

OpenAI clients: base_url=http://127.0.0.1:8080/v1 (chat, completions, responses,
tools, structured outputs; README lists the libraries tested); Ollama clients:
host=http://127.0.0.1:8080. model = the base's id (GET /v1/models) or an adapter name; "adapters": {"sql": 1.0, "tone": 0.5} with the
base's id mixes adapters. POST /v1/load_lora_adapter {"lora_name", "lora_path"} and
/v1/unload_lora_adapter {"lora_name"} change adapters at runtime (paths inside
--adapter-dir only; a PEFT or MLX-LM checkpoint folder is converted against the
base on first load and cached). Binds 127.0.0.1 unless --host says otherwise."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help=HELP, description=HELP, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE.gguf")
    p.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH[:SCALE]",
                   help="load an adapter at start: a .gguf, or a PEFT/MLX-LM checkpoint folder converted "
                   "against the base (its SCALE is the default when a request names it)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every endpoint but /health")
    p.add_argument("--adapter-dir", action="append", default=[], metavar="DIR", type=Path,
                   help="folder adapters may be loaded from at runtime (repeatable; none: runtime loading off)")
    p.add_argument("--convert-cache", metavar="DIR", type=Path, default=None,
                   help="where PEFT/MLX-LM checkpoints given as adapters are converted to "
                   "(default ~/.cache/edge-lora/converted)")
    p.add_argument("--parallel", type=int, default=1, metavar="N", help="requests generating at once (sequences, half to each of two contexts, whose steps decode in one batch)")
    p.add_argument("--model-name", default=None, help="the base's model id (default: the file name without .gguf)")
    p.add_argument("--n-ctx", type=int, default=4096, metavar="N", help="context length per request slot")
    p.add_argument("--threads", type=int, default=None, metavar="N")
    p.add_argument("--gpu-layers", type=int, default=0, metavar="N",
                   help="layers to offload to the GPU (CUDA, Metal, Vulkan; -1: all)")
    p.add_argument("--no-op-offload", action="store_true",
                   help="compute layers kept on the CPU there, also for long prompts (llama.cpp's op offload off)")
    add_chat_template_flag(p)
    add_speculative_flags(p)
    p.add_argument("--max-tokens-limit", type=int, default=4096, metavar="N", help="largest max_tokens accepted")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let browser pages from ORIGIN call the server (repeatable; '*': any; default none)")
    p.add_argument("--no-ollama", action="store_true", help="do not serve Ollama's API under /api/")
    p.add_argument("--no-web", action="store_true", help="do not serve the web page at /")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="info: a line per request; warning: failed requests only (default info)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N", help="largest request body accepted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..server import ServerSettings, create_app
    except ImportError as exc:
        raise MissingDependencyError(f"the server needs its extra: pip install 'edge-lora[server]' ({exc})") from exc
    from ..formats.gguf_file import is_checkpoint
    from ..runtime.runtime import Runtime
    from .checkpoints import ConvertedAdapters, default_cache_dir

    specs = [parse_adapter_spec(s) for s in args.adapter]
    for d in args.adapter_dir:
        if not d.is_dir():
            raise InvalidRequestError(f"--adapter-dir {d}: not a folder")
    template = read_flag_file("--chat-template-file", args.chat_template_file)
    kwargs, per_adapter = parse_template_kwargs(args.chat_template_kwargs, [n for n, _, _ in specs])
    rt = Runtime(args.base, n_ctx=args.n_ctx, n_threads=args.threads, n_gpu_layers=args.gpu_layers,
                 n_parallel=args.parallel, op_offload=not args.no_op_offload, chat_template=template,
                 template_kwargs=kwargs, speculative=speculative_setting(args))
    with rt:
        converted = ConvertedAdapters(args.convert_cache or default_cache_dir(), rt.base_info)
        for name, path, scale in specs:
            if is_checkpoint(Path(path)):
                done = converted.gguf_for(Path(path))
                for note in done.notes:
                    print(f"note: {name}: {note}", file=sys.stderr)
                path = str(done.path)
            rt.load_adapter(name, path, scale, template_kwargs=per_adapter.get(name))
        settings = ServerSettings(
            model_id=args.model_name or Path(args.base).name.removesuffix(".gguf"),
            api_key=args.api_key,
            adapter_dirs=tuple(args.adapter_dir),
            max_body_bytes=args.max_body_bytes,
            max_tokens_limit=args.max_tokens_limit,
            cors_origins=tuple(args.cors_origin),
            ollama=not args.no_ollama,
            web=not args.no_web,
            checkpoints=converted,
        )
        logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
        logging.getLogger("edge_lora").setLevel(args.log_level.upper())
        if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
            print(f"warning: serving on {args.host} without --api-key: anyone who can reach it can use it",
                  file=sys.stderr)
        app = create_app(rt, settings)
        print(f"edge-lora serving {settings.model_id} + {len(rt.adapters)} adapters on "
              f"http://{args.host}:{args.port}/v1" + ("" if args.no_web else f"; web page: http://{args.host}:{args.port}/"),
              file=sys.stderr, flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
        app.state.executor.shutdown(wait=False, cancel_futures=True)
    return 0
