"""`gpt2-onnx web [MODEL]`: the browser edition. Serves a page from 127.0.0.1 that loads the model directory
and generates in the browser (onnxruntime-web, WebAssembly), with the JavaScript package of `web/`
(`apps/web.py`). Needs `web/node_modules` (`cd web && npm ci`); says so in one line if it is missing.
"""

from __future__ import annotations

import argparse

from gpt2_onnx import precisions
from gpt2_onnx.errors import Gpt2OnnxError

from .. import settings
from ..console import port_number, write

HELP = "serve a page that generates in the browser (onnxruntime-web) from 127.0.0.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="model directory or hub id (default: the registry's)")
    parser.add_argument(
        "--precision", default=precisions.DEFAULT_PRECISION, choices=precisions.NAMES, help="the page's first variant"
    )
    parser.add_argument(
        "--device",
        default=precisions.WEB_DEVICES[0],
        choices=precisions.WEB_DEVICES,
        help="the page's first device: wasm (WebAssembly, every browser) or webgpu (the GPU: fp32 and int4)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="WebAssembly threads in the page, at most the machine's CPUs (default: the browser's choice)",
    )
    parser.add_argument("--port", type=port_number, default=settings.DEFAULT_PORT, help="port to bind (1-65535)")


def run(args: argparse.Namespace) -> int:
    from gpt2_onnx.generator import check_threads
    from gpt2_onnx.hub import resolve_model_dir

    from ..web import MODEL_PREFIX, PAGE, check_web_dir, make_server, mounts

    check_threads(args.threads)  # the page runs on this machine (127.0.0.1): its CPUs bound the page's threads
    try:
        precisions.check_web_device(args.device, args.precision, names=("--precision", "--device"))
    except ValueError as e:
        raise Gpt2OnnxError(str(e)) from None
    check_web_dir()
    model_dir = resolve_model_dir(args.model)
    try:
        server = make_server(mounts(model_dir), args.port)
    except OSError as e:  # the port is taken, or not ours to bind
        raise Gpt2OnnxError(f"cannot serve on 127.0.0.1:{args.port} ({e.strerror or e}); pick another --port") from None
    query = f"model={MODEL_PREFIX}&precision={args.precision}&device={args.device}"
    query += f"&threads={args.threads}" if args.threads else ""
    write(f"serving {model_dir} on http://127.0.0.1:{server.server_address[1]}{PAGE}?{query} (Ctrl-C stops)\n")
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
