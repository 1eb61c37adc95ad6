"""Where an export lands, made safe: export replaces only what it wrote.

    claim(out)                       checks, lock, signals   (before the checkpoint is loaded)
      └─> partial(out) → tmp         .NAME.partial-XXXX beside OUT_DIR, removed on any failure
            └─> publish(tmp, out)    permissions from the umask, then one rename

OUT_DIR may be replaced only when it is empty or holds an earlier export and nothing else:
every file in it one that its manifest lists (`Manifest.file_names`), checked when the
export starts and again as it is published; the latter only with force. It may never be,
lie inside, or contain the checkpoint.
A lock file `.NAME.lock` beside OUT_DIR is held for the whole export, so every
`.NAME.partial-*` or `.NAME.old-*` found by the lock's holder is a leftover of a
killed run (SIGKILL, power loss) and is removed. A second export to the same OUT_DIR
fails at once with a clear error, or with `wait` waits for the first one and returns
the directory it finished (concurrent first uses of a hub id in the cache).
SIGTERM, SIGINT and SIGHUP raise `Interrupted`, which unwinds through the cleanup.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gpt2_onnx.errors import Interrupted, ModelDirectoryError, SourceError
from gpt2_onnx.manifest import MANIFEST_NAME, read_manifest
from gpt2_onnx.precisions import BY_NAME
from gpt2_onnx.sources import CHECKPOINT_WEIGHTS

# rounding of the factors, plus tokenizer.json, config.json and the manifest
MARGIN_FACTOR, MARGIN_BYTES = 1.1, 16 << 20
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def estimate_export_bytes(weight_bytes: int, precisions: Iterable[str]) -> int:
    """Disk space an export of FP32 weights of `weight_bytes` into `precisions` needs, with a margin."""
    return int(weight_bytes * sum(BY_NAME[p].size_factor for p in precisions) * MARGIN_FACTOR) + MARGIN_BYTES


@contextmanager
def claim(
    out: Path, source: str, precisions: tuple[str, ...], force: bool, wait: bool, progress: Callable[[str], None]
) -> Iterator[bool]:
    """Hold `out` (absolute, resolved) for one export; yields True when, with `wait`, a
    concurrent export finished it meanwhile (nothing left to do), else False once every
    check passed and stale leftovers are gone."""
    check_parent(out.parent)
    with raising_on_signals(), _locked(out, wait, progress):
        if wait and (out / MANIFEST_NAME).is_file():
            yield True
            return
        check_replaceable(out, source, force)
        check_free_space(out.parent, estimate_export_bytes(_weight_bytes(source), precisions), precisions)
        _remove_stale(out)
        yield False


def check_parent(parent: Path) -> None:
    """OUT_DIR's parent exists and this process may create entries in it."""
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise SourceError(
            f"the parent directory of OUT_DIR, {parent}, {what}; create it (mkdir -p {parent}) or choose another "
            "OUT_DIR"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        cause = "read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "permission denied"
        raise SourceError(f"cannot write to {parent} ({cause}); choose an OUT_DIR on a writable file system")


def check_replaceable(out: Path, source: str, force: bool) -> None:
    """Refuse to replace the checkpoint or any directory that is not an earlier export."""
    checkpoint = Path(source).expanduser()
    if checkpoint.is_dir():
        checkpoint = checkpoint.resolve()
        relation = (
            "is the checkpoint SOURCE"
            if out == checkpoint
            else "lies inside the checkpoint SOURCE"
            if checkpoint in out.parents
            else "contains the checkpoint SOURCE"
            if out in checkpoint.parents
            else None
        )
        if relation:
            raise SourceError(
                f"OUT_DIR {out} {relation} {checkpoint}; choose an OUT_DIR outside it, e.g. {checkpoint}-onnx"
            )
    if not out.exists():
        return
    if not out.is_dir():
        raise SourceError(f"{out} exists and is not a directory; choose another OUT_DIR")
    reason = refusal(out)
    if reason:
        raise SourceError(reason)
    if any(out.iterdir()) and not force:
        raise SourceError(
            f"{out} already holds a gpt2-onnx model; pass --force (force=True) to replace it, or choose another OUT_DIR"
        )


def refusal(out: Path, entries_at: Path | None = None) -> str | None:
    """Why the directory `out` may not be replaced, whatever `force` says: it holds a file that no
    manifest of ours lists (`Manifest.file_names`), and a `gpt2_onnx.json` we cannot read lists
    nothing. None when it is empty or holds only what its manifest lists. `entries_at`: where
    out's entries are now, when `publish` has moved the directory aside."""
    at = entries_at or out
    entries = sorted(at.iterdir())
    names = [p.name for p in entries]
    if not names:
        return None
    if MANIFEST_NAME not in names:
        return (
            f"{out} holds {describe_names(names)}, not a gpt2-onnx model directory; "
            "export replaces only directories it wrote: choose another OUT_DIR"
        )
    try:
        listed = read_manifest(at).file_names()
    except ModelDirectoryError:
        return (
            f"{out / MANIFEST_NAME} is not a manifest this gpt2-onnx can read, so export cannot tell which of "
            f"{describe_names(names)} it wrote: choose another OUT_DIR, or remove {out} yourself if nothing in it "
            "is needed"
        )
    foreign = [p.name for p in entries if p.name not in listed or not p.is_file()]
    if foreign:
        return (
            f"{out} holds {describe_names(foreign)} beside the gpt2-onnx model, which export did not write; "
            f"move {'it' if len(foreign) == 1 else 'them'} out of {out} (then --force replaces the model) "
            "or choose another OUT_DIR"
        )
    return None


def describe_names(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c', 'a, b and 3 other files'."""
    if len(names) <= 3:
        return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
    return f"{names[0]}, {names[1]} and {len(names) - 2} other files"


def check_free_space(parent: Path, needed: int, precisions: tuple[str, ...]) -> None:
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise SourceError(
            f"{parent} has {free / 2**20:.1f} MiB free, the export ({', '.join(precisions)}) needs about "
            f"{needed / 2**20:.1f} MiB; free some space or choose an OUT_DIR on another file system"
        )


def _weight_bytes(source: str) -> int:
    """Size of the checkpoint's weight file, when it is local or in the hub cache; else 0
    (the margin alone is checked, nothing is downloaded to find out)."""
    path = Path(source).expanduser()
    for name in CHECKPOINT_WEIGHTS:
        if path.is_dir():
            found = path / name if (path / name).is_file() else None
        else:
            found = _hub_cached(source, name)
        if found is not None:
            return found.stat().st_size
    return 0


def _hub_cached(repo_id: str, name: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, name)
    except (ImportError, ValueError):  # ValueError: not a valid repo id, resolve_source will say so
        return None
    return Path(found) if isinstance(found, str) else None


@contextmanager
def raising_on_signals() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP raise `Interrupted` for the duration; handlers can only
    be set in the main thread, so elsewhere nothing changes. The previous ones come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_interrupted) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


@contextmanager
def _locked(out: Path, wait: bool, progress: Callable[[str], None]) -> Iterator[None]:
    """Hold `.NAME.lock` (flock) beside `out`. The file is removed by its holder on release;
    a waiter that then finds it got the lock on a removed file tries again."""
    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _acquire(fd, path, out, wait, progress)
            if _still_named(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _acquire(fd: int, path: Path, out: Path, wait: bool, progress: Callable[[str], None]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
    if not wait:
        raise SourceError(
            f"another export to {out} is running (process {holder} holds {path}); "
            "wait for it to finish or choose another OUT_DIR"
        )
    progress(f"waiting for another export to {out} (process {holder}) to finish")
    fcntl.flock(fd, fcntl.LOCK_EX)


def _remove_stale(out: Path) -> None:
    """Leftovers of a killed export: no live export holds the lock we hold."""
    for pattern in (f".{out.name}.partial-*", f".{out.name}.old-*"):
        for stale in out.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def partial(out: Path) -> Iterator[Path]:
    """A new hidden directory beside `out` to write into, removed if anything fails; an OS
    error (no space, read-only, permissions) becomes one SourceError naming `out` and the cause."""
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        yield tmp
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            hint = "free some space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check the permissions"
            raise SourceError(
                f"cannot write {out}: {e.strerror or e}; {hint} or choose another OUT_DIR (nothing was written)"
            ) from None
        raise


def publish(tmp: Path, out: Path) -> None:
    """Give the finished directory the umask's permissions (mkdtemp made it 0700; the files,
    written with open(), follow the umask already) and move it into place; an earlier
    export (with force) is removed only after, and only if it still holds nothing but its files."""
    os.chmod(tmp, 0o777 & ~current_umask())
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        out.rename(old)
    try:
        # checked again where nobody writes any more: a file added to OUT_DIR during the export stays
        reason = refusal(out, old) if old is not None else None
        if reason:
            raise SourceError(f"{reason} (nothing was replaced)")
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def current_umask() -> int:
    """The process umask: as Linux shows it in /proc, else by setting it and straight back
    (which another thread creating a file at that instant would notice)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask
