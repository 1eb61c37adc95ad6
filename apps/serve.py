"""`gpt2-onnx serve`: settings from the command line, then uvicorn until SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting connections and lets open ones (running requests,
streams) finish for up to --grace-period seconds; then the app ends the calls still open
(`close_calls`: a stream gets an error event, a waiting request a 503) and the process exits
0. uvicorn itself would cancel their handlers mid-answer (tracebacks in the log, streams cut
without a word), so its own timeout is set later, as a backstop. uvicorn re-raises the
signal it caught once it has shut down, so a no-op SIGTERM handler is in place beforehand:
the re-raised signal ends nothing, and `main` returns normally.

The API key comes from --api-key, --api-key-file (its first line) or the API_KEY_ENV
environment variable; the latter two keep it out of the process list.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import socket
from collections.abc import Mapping
from pathlib import Path

import uvicorn

from gpt2_onnx.errors import Gpt2OnnxError
from gpt2_onnx.generator import prefix_cache_size
from gpt2_onnx.precisions import BY_NAME

from .bridge import Service
from .console import model_settings
from .server import close_calls, create_app
from .settings import API_KEY_ENV, Capacity, ModelSettings, Settings

MB = 2**20
BACKSTOP_S = 5.0  # after --grace-period: time the closed calls have to end before uvicorn cancels them


class _Server(uvicorn.Server):
    """uvicorn's server; on shutdown, the app's open calls are closed when the grace period ends."""

    def __init__(self, config: uvicorn.Config, grace_period: float):
        super().__init__(config)
        self.grace_period = grace_period

    async def shutdown(self, sockets=None) -> None:
        asyncio.get_running_loop().call_later(self.grace_period, close_calls, self.config.app)
        await super().shutdown(sockets)


def api_key(args, environ: Mapping[str, str]) -> str | None:
    """The key /v1 requires: --api-key, else --api-key-file's first line, else API_KEY_ENV; None: no key."""
    if args.api_key is not None and args.api_key_file is not None:
        raise Gpt2OnnxError("--api-key and --api-key-file both given; pass one")
    if args.api_key is not None:
        key, source = args.api_key, "--api-key"
    elif args.api_key_file is not None:
        try:
            lines = Path(args.api_key_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise Gpt2OnnxError(f"cannot read the --api-key-file {args.api_key_file}: {e}") from None
        key, source = (lines[0] if lines else ""), f"the first line of --api-key-file {args.api_key_file}"
    elif API_KEY_ENV in environ:
        key, source = environ[API_KEY_ENV], f"the environment variable {API_KEY_ENV}"
    else:
        return None
    key = key.strip()
    if not key or any(not c.isprintable() for c in key):
        raise Gpt2OnnxError(
            f"{source} holds no usable API key (empty, or with control characters); "
            f"set a key, or give none to serve without one"
        )
    return key


def _listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before the model loads: an address in use is one line (uvicorn
    would exit while the model loads in a thread, and the process abort)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise Gpt2OnnxError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; pick another --port or --host"
        ) from None
    return sock


def settings_from(args) -> tuple[ModelSettings, Settings]:
    """What `gpt2-onnx serve ARGS` loads and how it serves, checked: the same on one machine and on Ray."""
    for name, low in (("max_waiting", 0), ("prefill_chunk", 1), ("max_body_bytes", 1)):  # --max-running: the command's
        if getattr(args, name) < low:
            raise Gpt2OnnxError(f"--{name.replace('_', '-')} must be ≥ {low}, got {getattr(args, name)}")
    if args.kv_cache_mb is not None and args.kv_cache_mb <= 0:
        raise Gpt2OnnxError(f"--kv-cache-mb must be > 0, got {args.kv_cache_mb}")
    try:
        args.chat_template.format(role="", content="")
    except (KeyError, IndexError, ValueError) as e:
        raise Gpt2OnnxError(
            f"--chat-template may use only {{role}} and {{content}} (double other braces): {e!r}"
        ) from None
    model_name = args.model_name or args.model or _default_model()
    capacity = Capacity(args.max_running, args.max_waiting, args.kv_cache_mb, args.prefill_chunk)
    if not (math.isfinite(args.grace_period) and args.grace_period >= 0):
        raise Gpt2OnnxError(f"--grace-period must be a number of seconds ≥ 0, got {args.grace_period}")
    settings = Settings(model_name, capacity, api_key(args, os.environ), args.chat_template, args.max_body_bytes)
    return _model_settings(args), settings


def serve(args) -> int:
    """Run the server of `gpt2-onnx serve ARGS`; the exit code."""
    model, settings = settings_from(args)
    if args.ray:
        return _serve_on_ray(args, model, settings)
    model_name = settings.model_name
    config = uvicorn.Config(
        None,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=args.grace_period + BACKSTOP_S,
    )
    server = _Server(config, args.grace_period)
    failed: list[str] = []

    def on_load(service: Service | None, error: str | None) -> None:
        if service is None:
            failed.append(error or "the model did not load")
            server.should_exit = True
            return
        print(start_line(service, model_name, args), flush=True)

    sock = _listening_socket(args.host, args.port)
    config.app = create_app(model.load, settings, on_load)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run(sockets=[sock])
    if failed:
        raise Gpt2OnnxError(failed[0])
    return 0


def _model_settings(args) -> ModelSettings:
    """What the server (each replica on Ray) loads; a prefix cache its precision cannot have is refused
    here, before the port is taken, as is a negative size (`prefix_cache_size`: None, the default, leaves it off
    there)."""
    prefix_cache_size(args.precision, args.prefix_cache_mb)
    return model_settings(args)


def start_line(service: Service, model_name: str, args) -> str:
    """The line the server prints once its model is loaded: its precision (with what the load-time probe
    decided where the precision's one-row calls may differ: `session.lone_row_is_exact`), where it listens,
    its KV budget, its limits and its prefix cache (on with its budget, or off)."""
    generator = service.generator
    precision = generator.precision
    if precision in BY_NAME and BY_NAME[precision].min_call_rows > 1:
        scratch = generator.decoder.min_rows - 1
        precision += "; a lone row runs " + (
            "alone (exact on this CPU)" if not scratch else f"beside {scratch} scratch row(s) (not exact alone here)"
        )
    architecture = generator.manifest.architecture
    budget = service.engine.budget
    rows = budget // architecture.n_positions
    cache = generator.prefix_cache
    prefix = f"prefix cache {cache.budget_bytes / MB:g} MB" if cache else "prefix cache off"
    return (
        f"gpt2-onnx serve: {model_name} ({precision}) on http://{args.host}:{args.port}; "
        f"KV budget {budget * architecture.kv_bytes_per_token / MB:.1f} MB = {rows} full-context row(s) "
        f"of {architecture.n_positions} positions; {args.max_running} running, {args.max_waiting} waiting at most; "
        f"{prefix}"
    )


def _default_model() -> str:
    from gpt2_onnx.models import default_model

    return default_model()


def ray_settings_from(args, model: ModelSettings):
    """The `RayServeSettings` of `gpt2-onnx serve --ray ARGS`: every replica loads `model`."""
    from .ray_serve import RayServeSettings

    return RayServeSettings(
        model,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        host=args.host,
        port=args.port,
    )


def _serve_on_ray(args, model: ModelSettings, settings: Settings) -> int:
    """The same app as replicas on Ray Serve (`apps.ray_serve`), until Ctrl-C: each replica loads `model`
    (its prefix cache included) and serves with `settings`, as the local server does."""
    from .ray_serve import serve_on_ray

    serve_on_ray(None if args.ray == "local" else args.ray, ray_settings_from(args, model), settings)
    return 0
