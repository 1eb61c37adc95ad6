"""Checking a model directory's files against the sha256 sums in its manifest.

Hashing is the slowest part of loading (a 62 MB INT8 graph takes about 0.3 s here, more
than creating its session), so a file that hashed correctly is remembered by its stat
signature (device, inode, size, modification and change times) in
`$GPT2_ONNX_CACHE/verified.json`: while the signature is unchanged the file is not read
again. Any write to the file changes its change time (`st_ctime_ns`), which no program can
set back, so a modified file is always hashed again and refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .cache import cache_root
from .errors import ModelDirectoryError
from .manifest import MANIFEST_NAME

VERIFIED_NAME = "verified.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_paths(model_dir: Path, files: list[tuple[str, str]]) -> list[Path]:
    """The paths of the given (name, sha256) files of a model directory, after checking them
    against the manifest; the cache of verified signatures is read and written once."""
    verified = _read_verified()
    paths, newly = [], {}
    for name, sha256 in files:
        path = model_dir / name
        if not path.is_file():
            raise ModelDirectoryError(
                f"{path} is missing although {MANIFEST_NAME} lists it; re-export the model directory"
            )
        if verified.get(str(path.resolve())) != [_signature(path), sha256]:
            if sha256_file(path) != sha256:
                raise ModelDirectoryError(
                    f"{path} does not match the sha256 in {MANIFEST_NAME} (corrupt or modified); re-export the model "
                    "directory"
                )
            newly[path] = sha256
        paths.append(path)
    if newly:
        remember_verified(newly, verified)
    return paths


def remember_verified(files: dict[Path, str], verified: dict[str, list[str]] | None = None) -> None:
    """Record files whose sha256 is known to be right as they are now (the exporter calls
    this for the files it has just written and hashed); `verified`: the cache, if already read."""
    verified = _read_verified() if verified is None else verified
    for path, sha256 in files.items():
        verified[str(path.resolve())] = [_signature(path), sha256]
    _write_verified({k: v for k, v in verified.items() if os.path.exists(k)})


def _signature(path: Path) -> str:
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def _read_verified() -> dict[str, list[str]]:
    try:
        data = json.loads((cache_root() / VERIFIED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_verified(verified: dict[str, list[str]]) -> None:
    """Atomically (concurrent loads may write too); a cache that cannot be written only
    means hashing again next time."""
    try:
        root = cache_root()
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=root)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(verified, f)
        os.replace(tmp, root / VERIFIED_NAME)
    except OSError:
        pass
