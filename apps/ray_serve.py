"""`gpt2-onnx serve --ray [ADDRESS] --replicas N`: the OpenAI-compatible app on Ray Serve.

    ray.init(ADDRESS) ─> serve.start(host, port) ─> serve.run(Gpt2OnnxReplica × N)
        each replica: Generator.load(threads) ─> create_app(generator, settings) (its own engine)
        Serve's proxy spreads requests over the replicas; autoscaling (optional) on ongoing requests

The app is the one of `gpt2-onnx serve` (`gpt2_onnx.apps.server.create_app`), built inside
each replica after its model loads (`__serve_build_asgi_app__`), so routes, streaming,
cancellation and limits behave as on one machine. A replica that dies is restarted by
Serve; the requests it was running fail, new ones go to the live replicas.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from gpt2_onnx.errors import Gpt2OnnxError

APP_NAME = "gpt2-onnx"


@dataclass(frozen=True)
class RayServeSettings:
    """Where the replicas run and how many; `min_replicas`/`max_replicas` set: autoscaling
    between them, aiming at `target_ongoing_requests` per replica (about its --max-running)."""

    model: str | None
    precision: str
    threads: int = 1  # cores per replica (its ray_actor_options num_cpus)
    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: int = 8
    host: str = "127.0.0.1"
    port: int = 8000


def _server_module():
    try:
        from gpt2_onnx.apps import server
    except ImportError as e:
        raise Gpt2OnnxError(
            f"serve --ray needs the OpenAI-compatible server gpt2_onnx.apps.server (create_app, ServerSettings), "
            f"which this installation lacks ({e}); install a gpt2-onnx that has `gpt2-onnx serve`"
        ) from None
    return server


def _import_serve():
    try:
        from ray import serve
    except ImportError:
        raise Gpt2OnnxError("serve --ray needs the ray extra (ray[serve] is missing): pip install 'gpt2-onnx[ray]'") from None
    return serve


def build_application(ray_settings: RayServeSettings, server_settings: Any):
    """The bound Serve application: `replicas` (or an autoscaling range of) replicas, each
    holding one Generator with `threads` cores and the server app over it."""
    serve = _import_serve()
    _server_module()  # fail here, before any replica starts, if the server is missing

    class Gpt2OnnxReplica:
        """One replica: a Generator and the FastAPI app of `gpt2-onnx serve` over it."""

        def __init__(self, model: str | None, precision: str, threads: int, settings: Any):
            from gpt2_onnx.generator import Generator

            self.generator = Generator.load(model, precision=precision, threads=threads)
            self.settings = settings

        def __serve_build_asgi_app__(self):
            return _server_module().create_app(self.generator, self.settings)  # loaded: /health is 200 at once

    s = ray_settings
    scaling: dict[str, Any] = {"num_replicas": s.replicas}
    if s.min_replicas is not None or s.max_replicas is not None:
        low = s.min_replicas if s.min_replicas is not None else 1
        high = s.max_replicas if s.max_replicas is not None else max(low, s.replicas)
        if not 1 <= low <= high:
            raise Gpt2OnnxError(f"the autoscaling range needs 1 ≤ min_replicas ≤ max_replicas, got {low}..{high}")
        scaling = {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                          "target_ongoing_requests": s.target_ongoing_requests}}
    deployment = serve.deployment(name="gpt2-onnx", ray_actor_options={"num_cpus": s.threads}, **scaling)(
        serve.ingress()(Gpt2OnnxReplica)
    )
    return deployment.bind(None if s.model is None else str(s.model), s.precision, s.threads, server_settings)


def serve_on_ray(address: str | None, ray_settings: RayServeSettings, server_settings: Any,
                 stop: threading.Event | None = None) -> None:
    """Join the cluster at `address` (None: start a local one), run the application on
    host:port, and keep it up until `stop` is set or Ctrl-C; then shut Serve down."""
    import ray

    serve = _import_serve()
    if not ray.is_initialized():
        ray.init(address=address, **({} if address else {"include_dashboard": False}))
    serve.start(http_options={"host": ray_settings.host, "port": ray_settings.port})
    serve.run(build_application(ray_settings, server_settings), name=APP_NAME, route_prefix="/")
    try:
        (stop or threading.Event()).wait()
    finally:
        serve.shutdown()


def add_ray_arguments(serve_parser) -> None:
    """The `--ray` options of `gpt2-onnx serve` (its handler calls `serve_on_ray` when args.ray is set)."""
    serve_parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                              help="run on Ray Serve: a new local cluster, or the cluster at ADDRESS")
    serve_parser.add_argument("--replicas", type=int, default=1, help="with --ray: replicas, each with --threads cores")
    serve_parser.add_argument("--min-replicas", type=int, default=None, help="with --ray: autoscale from this many replicas")
    serve_parser.add_argument("--max-replicas", type=int, default=None, help="with --ray: autoscale up to this many replicas")
