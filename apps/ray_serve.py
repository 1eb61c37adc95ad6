"""`gpt2-onnx serve --ray [ADDRESS] --replicas N`: the OpenAI-compatible app on Ray Serve.

    ray.init(ADDRESS) ─> serve.start(host, port) ─> serve.run(Gpt2OnnxReplica × N)
        each replica: ModelSettings.load (threads, prefix cache) ─> create_app(generator, settings) (its own engine)
        Serve's proxy spreads requests over the replicas; autoscaling (optional) on ongoing requests

The app is the one of `gpt2-onnx serve` (`gpt2_onnx.apps.server.create_app`), built inside
each replica after its model loads (`__serve_build_asgi_app__`), so routes, streaming,
cancellation and limits behave as on one machine; each replica loads the model as the local server does
(`ModelSettings`: precision, threads, prefix cache). A replica that dies is restarted by
Serve; the requests it was running fail, new ones go to the live replicas.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from gpt2_onnx.errors import Gpt2OnnxError

from .settings import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_REPLICAS, ModelSettings, Settings

APP_NAME = "gpt2-onnx"


@dataclass(frozen=True)
class RayServeSettings:
    """What each replica loads (`model`; its threads are the replica's cores), where the replicas
    listen and how many; `min_replicas`/`max_replicas` set: autoscaling between them, aiming at a
    replica's --max-running ongoing requests each."""

    model: ModelSettings
    replicas: int = DEFAULT_REPLICAS
    min_replicas: int | None = None
    max_replicas: int | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT


def _server_module():
    try:
        from gpt2_onnx.apps import server
    except ImportError as e:
        raise Gpt2OnnxError(
            f"serve --ray needs the OpenAI-compatible server gpt2_onnx.apps.server (create_app), "
            f"which this installation lacks ({e}); install a gpt2-onnx that has `gpt2-onnx serve`"
        ) from None
    return server


def _import_serve():
    try:
        from ray import serve
    except ImportError:
        raise Gpt2OnnxError(
            "serve --ray needs the ray extra (ray[serve] is missing): pip install 'gpt2-onnx[ray]'"
        ) from None
    return serve


def build_application(ray_settings: RayServeSettings, server_settings: Settings):
    """The bound Serve application: `replicas` (or an autoscaling range of) replicas, each
    holding one Generator (`ray_settings.model`, with RAY_THREADS cores unless it names its
    threads) and the server app over it, with `server_settings`."""
    serve = _import_serve()
    _server_module()  # fail here, before any replica starts, if the server is missing

    class Gpt2OnnxReplica:
        """One replica: a Generator and the FastAPI app of `gpt2-onnx serve` over it."""

        def __init__(self, model: ModelSettings, settings: Settings):
            self.generator = model.load()
            self.settings = settings

        def __serve_build_asgi_app__(self):
            return _server_module().create_app(self.generator, self.settings)  # loaded: /health is 200 at once

    s, model = ray_settings, ray_settings.model.on_ray()
    scaling: dict[str, Any] = {"num_replicas": s.replicas}
    if s.min_replicas is not None or s.max_replicas is not None:
        low = s.min_replicas if s.min_replicas is not None else 1
        high = s.max_replicas if s.max_replicas is not None else max(low, s.replicas)
        if not 1 <= low <= high:
            raise Gpt2OnnxError(f"the autoscaling range needs 1 ≤ min_replicas ≤ max_replicas, got {low}..{high}")
        scaling = {
            "autoscaling_config": {
                "min_replicas": low,
                "max_replicas": high,
                "target_ongoing_requests": server_settings.capacity.max_running,
            }
        }
    deployment = serve.deployment(name="gpt2-onnx", ray_actor_options={"num_cpus": model.threads}, **scaling)(
        serve.ingress()(Gpt2OnnxReplica)
    )
    return deployment.bind(model, server_settings)


def serve_on_ray(
    address: str | None, ray_settings: RayServeSettings, server_settings: Settings, stop: threading.Event | None = None
) -> None:
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
    serve_parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        default=None,
        metavar="ADDRESS",
        help="run on Ray Serve: a new local cluster, or the cluster at ADDRESS",
    )
    serve_parser.add_argument(
        "--replicas", type=int, default=DEFAULT_REPLICAS, help="with --ray: replicas, each with --threads cores"
    )
    serve_parser.add_argument(
        "--min-replicas", type=int, default=None, help="with --ray: autoscale from this many replicas"
    )
    serve_parser.add_argument(
        "--max-replicas", type=int, default=None, help="with --ray: autoscale up to this many replicas"
    )
