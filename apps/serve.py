"""`gpt2-onnx serve`: settings from the command line, then uvicorn until SIGTERM or Ctrl-C.

On SIGTERM uvicorn stops accepting connections and lets open ones (running requests,
streams) finish for up to --grace-period seconds; the process then exits 0. uvicorn
re-raises the signal it caught once it has shut down, so a no-op SIGTERM handler is in
place beforehand: the re-raised signal ends nothing, and `main` returns normally.
"""

from __future__ import annotations

import signal

import uvicorn

from gpt2_onnx.errors import Gpt2OnnxError
from gpt2_onnx.generator import Generator
from gpt2_onnx.precisions import BY_NAME

from .bridge import Capacity, Service
from .server import Settings, create_app

MB = 2**20


def serve(args) -> int:
    """Run the server of `gpt2-onnx serve ARGS`; the exit code."""
    for name, low in (("max_running", 1), ("max_waiting", 0), ("port", 0), ("prefill_chunk", 1), ("max_body_bytes", 1)):
        if getattr(args, name) < low:
            raise Gpt2OnnxError(f"--{name.replace('_', '-')} must be ≥ {low}, got {getattr(args, name)}")
    if args.kv_cache_mb is not None and args.kv_cache_mb <= 0:
        raise Gpt2OnnxError(f"--kv-cache-mb must be > 0, got {args.kv_cache_mb}")
    try:
        args.chat_template.format(role="", content="")
    except (KeyError, IndexError, ValueError) as e:
        raise Gpt2OnnxError(f"--chat-template may use only {{role}} and {{content}} (double other braces): {e!r}") from None
    model_name = args.model_name or args.model or _default_model()
    capacity = Capacity(args.max_running, args.max_waiting, args.kv_cache_mb, args.prefill_chunk)
    settings = Settings(model_name, capacity, args.api_key, args.chat_template, args.max_body_bytes)
    if args.ray:
        return _serve_on_ray(args, settings)
    config = uvicorn.Config(None, host=args.host, port=args.port, log_level="warning",
                            timeout_graceful_shutdown=args.grace_period)
    server = uvicorn.Server(config)
    failed: list[str] = []

    def on_load(service: Service | None, error: str | None) -> None:
        if service is None:
            failed.append(error or "the model did not load")
            server.should_exit = True
            return
        print(_start_line(service, model_name, args), flush=True)

    if args.prefix_cache_mb < 0:
        raise Gpt2OnnxError(f"--prefix-cache-mb must be ≥ 0, got {args.prefix_cache_mb}")
    cache_mb = args.prefix_cache_mb if BY_NAME[args.precision].shape_exact else 0  # see Precision.shape_exact
    load = lambda: Generator.load(args.model, precision=args.precision, threads=args.threads, prefix_cache_mb=cache_mb)
    config.app = create_app(load, settings, on_load)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    if failed:
        raise Gpt2OnnxError(failed[0])
    return 0


def _start_line(service: Service, model_name: str, args) -> str:
    architecture = service.generator.manifest.architecture
    budget = service.engine.budget
    rows = budget // architecture.n_positions
    return (f"gpt2-onnx serve: {model_name} ({service.generator.precision}) on http://{args.host}:{args.port}; "
            f"KV budget {budget * architecture.kv_bytes_per_token / MB:.1f} MB = {rows} full-context row(s) "
            f"of {architecture.n_positions} positions; {args.max_running} running, {args.max_waiting} waiting at most")


def _default_model() -> str:
    from gpt2_onnx.models import default_model
    return default_model()


def _serve_on_ray(args, settings: Settings) -> int:
    """The same app as replicas on Ray Serve (`apps.ray_serve`), until Ctrl-C."""
    from .ray_serve import RayServeSettings, serve_on_ray

    ray_settings = RayServeSettings(args.model, args.precision, threads=args.threads or 1, replicas=args.replicas,
                                    min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                                    target_ongoing_requests=args.max_running, host=args.host, port=args.port)
    serve_on_ray(None if args.ray == "local" else args.ray, ray_settings, settings)
    return 0
