"""`gpt2-onnx serve`: an OpenAI-compatible HTTP server with continuous batching (`apps/serve.py`),
or its app as Ray Serve replicas (`--ray`, `apps/ray_serve.py`).

Needs the serve extra (fastapi, uvicorn, prometheus_client), imported when it runs.
"""

from __future__ import annotations

import argparse

from .. import settings
from ..console import add_model_arguments, check_max_running, port_number, require
from ..openai_api import DEFAULT_CHAT_TEMPLATE
from ..ray_serve import add_ray_arguments

HELP = "an OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions) with continuous batching"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, on_ray=True, prefix_cache_mb=None)
    parser.add_argument(
        "--model-name", default=None, help="the model id clients pass and /v1/models lists (default: --model as given)"
    )
    parser.add_argument(
        "--host", default=settings.DEFAULT_HOST, help="address to bind (0.0.0.0 exposes the server to the network)"
    )
    parser.add_argument("--port", type=port_number, default=settings.DEFAULT_PORT, help="port to bind (1-65535)")
    parser.add_argument(
        "--max-running",
        type=int,
        default=settings.DEFAULT_MAX_RUNNING,
        help="rows decoding together (a sampled n > 1 takes n rows)",
    )
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=settings.DEFAULT_MAX_WAITING,
        help="requests queued beyond the running ones; more get 429",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require `Authorization: Bearer KEY` on /v1 (default: no key; "
        f"--api-key-file or the {settings.API_KEY_ENV} environment variable keep it out of `ps`)",
    )
    parser.add_argument(
        "--api-key-file", default=None, metavar="PATH", help="read the API key from this file's first line"
    )
    parser.add_argument(
        "--kv-cache-mb",
        type=float,
        default=None,
        help="KV cache budget in MB (default: enough for every running row at full context)",
    )
    parser.add_argument(
        "--prefill-chunk",
        type=int,
        default=settings.DEFAULT_PREFILL_CHUNK,
        help="prompt tokens prefilled per step beside the decoding rows",
    )
    parser.add_argument(
        "--chat-template",
        default=DEFAULT_CHAT_TEMPLATE,
        help="chat messages → prompt: this template per message ({role}, {content}), one per line",
    )
    parser.add_argument(
        "--max-body-bytes", type=int, default=settings.DEFAULT_MAX_BODY_BYTES, help="larger request bodies get 413"
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=settings.DEFAULT_GRACE_PERIOD_S,
        help="seconds running requests may take to finish on SIGTERM",
    )
    add_ray_arguments(parser)


def run(args: argparse.Namespace) -> int:
    check_max_running(args.max_running)
    require("serve")
    from ..serve import serve

    return serve(args)
