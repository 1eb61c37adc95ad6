"""The server of `gpt2-onnx web`: the page, the JavaScript package (`web/`), the two packages it imports in a
browser, and one model directory, from 127.0.0.1, with the headers that make the page cross-origin isolated
(WebAssembly threads need SharedArrayBuffer, which browsers give only to such pages).

    /                    → /web/page/index.html?model=/model/
    /web/page/, /web/src/   web/page, web/src of this checkout
    /web/node_modules/onnxruntime-web/dist/, /web/node_modules/@huggingface/tokenizers/dist/
    /model/              the model directory's files that its manifest names, nothing else

The standard library's threading HTTP server: a page for one user, not a production server (`gpt2-onnx serve` is
that). A benchmark mounts more (transformers.js) through `Mount`.
"""

from __future__ import annotations

import http.server
import posixpath
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpt2_onnx.errors import Gpt2OnnxError
from gpt2_onnx.manifest import read_manifest

WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the JavaScript package of this checkout
NPM_INSTALL = "cd web && npm ci"  # what fetches web/node_modules (package-lock.json pins it)
PAGE = "/web/page/index.html"
MODEL_PREFIX = "/model/"
BROWSER_PACKAGES = ("onnxruntime-web/dist", "@huggingface/tokenizers/dist")  # what the page's import map names
# cross-origin isolation: the page may share memory with its WebAssembly threads
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True)
class Mount:
    """URL paths under `prefix` are files under `root`; `files`: only these names (None: any file under it,
    a link only where it leads to one)."""

    prefix: str
    root: Path
    files: frozenset[str] | None = None

    def path(self, url_path: str) -> Path | None:
        """The file a URL path names under this mount, or None (outside it, a name not served, a directory)."""
        if not url_path.startswith(self.prefix):
            return None
        rest = posixpath.normpath(url_path[len(self.prefix) :])
        if rest.startswith(("..", "/")) or rest == ".":
            return None
        if self.files is not None and rest not in self.files:
            return None
        path = self.root / rest
        if not path.is_file():
            return None
        # an open mount serves the files under its root only: not one a link there leads out to (a model
        # directory's files are named by its manifest, and may be links into a download cache)
        if self.files is None and not path.resolve().is_relative_to(self.root.resolve()):
            return None
        return path


def check_web_dir(web_dir: Path | None = None) -> None:
    """Refuse, in one line naming the fix, a checkout without the package or its installed dependencies
    (`web_dir`: default WEB_DIR)."""
    web_dir = WEB_DIR if web_dir is None else web_dir
    if not (web_dir / "src" / "browser.js").is_file():
        raise Gpt2OnnxError(f"{web_dir} holds no JavaScript package: `gpt2-onnx web` runs from a source checkout")
    missing = [p for p in BROWSER_PACKAGES if not (web_dir / "node_modules" / p).is_dir()]
    if missing:
        raise Gpt2OnnxError(
            f"the page's JavaScript dependencies are not installed ({web_dir}/node_modules/{missing[0]} is missing): "
            f"{NPM_INSTALL}"
        )


def mounts(model_dir: Path, web_dir: Path | None = None) -> list[Mount]:
    """What the page needs: the package, its browser dependencies, and the model directory's own files."""
    web_dir = WEB_DIR if web_dir is None else web_dir
    manifest = read_manifest(model_dir)
    return [
        Mount("/web/page/", web_dir / "page"),
        Mount("/web/src/", web_dir / "src"),
        *(Mount(f"/web/node_modules/{p}/", web_dir / "node_modules" / p) for p in BROWSER_PACKAGES),
        Mount(MODEL_PREFIX, model_dir, manifest.file_names()),
    ]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """GET and HEAD of the mounted files, with the isolation headers; everything else is 404."""

    mounts: Sequence[Mount] = ()
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".js": "text/javascript",
        ".mjs": "text/javascript",
        ".wasm": "application/wasm",
        ".json": "application/json",
        ".onnx": "application/octet-stream",
        ".data": "application/octet-stream",
    }

    def translate_path(self, path: str) -> str:
        url_path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        found = next((p for p in (m.path(url_path) for m in self.mounts) if p is not None), None)
        return str(found) if found is not None else "/nonexistent/gpt2-onnx-web"

    def send_head(self):
        if urllib.parse.urlsplit(self.path).path == "/":
            self.send_response(302)
            self.send_header("Location", f"{PAGE}?model={MODEL_PREFIX}")
            self.end_headers()
            return None
        return super().send_head()

    def list_directory(self, path):  # never list a directory
        self.send_error(404)
        return None

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet: the command prints its one line
        pass


def make_server(mounts: Sequence[Mount], port: int, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """A server of `mounts` bound to host:port (port 0: a free one, `server.server_address[1]`)."""
    handler = type("Handler", (_Handler,), {"mounts": tuple(mounts)})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
