"""Writing files and folders safely: the one output rule of every command, atomic writes, sha256.

The output rule (`check_output`), checked before any work starts:
- an output never is, contains or lies inside one of the command's inputs (`export CK -o CK` is refused);
- an output is never the current folder or one of its parents (`-o .`);
- an existing output is replaced only with `overwrite`, only by the same kind (file for file, folder for
  folder), and a non-empty folder only if it holds the marker file of what the command writes there
  (export.json, config.json, ...): `--overwrite` never deletes a folder of the user's own;
- the parent folder must be writable (checked up front, so a long run cannot end in a refused write).

Atomic writes: a file is written under a temporary name beside its target and renamed over it; a folder is
filled as a temporary sibling and swapped in. Readers see the old thing or the whole new one. Temporaries are
named `.NAME.jetmoe-tmp-PID-XXXX`; those of a process that no longer exists (killed, say, by the kernel's OOM
killer) are removed the next time anything is written beside them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from jetmoe.errors import OutputError

_TMP = ".jetmoe-tmp-"


def check_output(target: str | os.PathLike, *, kind: str, overwrite: bool, inputs: Sequence[str | os.PathLike] = (),
                 marker: str | None = None, owned: Callable[[Path], str | None] | None = None,
                 flag: str = "--overwrite") -> Path:
    """Apply the output rule to `target` (kind "file" or "dir"); return it as a Path. Raises OutputError.

    A non-empty folder is replaced only when it holds `marker` and, where several commands write the same marker
    (export.json: `jetmoe export` and `jetmoe quantize`; config.json: checkpoints and exports), when
    `owned(folder)` finds no other writer: it returns None for "written by this command", else what the folder is
    ("a quantized export")."""
    target = Path(target)
    where = _resolved(target)
    for source in inputs:
        source_at = _resolved(Path(source))
        if where == source_at or source_at in where.parents or where in source_at.parents:
            raise OutputError(f"output {target} would overwrite the input {source}: choose another output")
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        raise OutputError(f"output {target} is the current folder or one of its parents: choose a new folder")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputError(f"output {target} already exists; pass {flag} to replace it")
        is_dir = target.is_dir() and not target.is_symlink()
        if kind == "dir" and not is_dir:
            raise OutputError(f"output {target} exists and is not a folder; refusing to replace it with one")
        if kind == "file" and is_dir:
            raise OutputError(f"output {target} is a folder; refusing to replace it with a file")
        if kind == "dir" and any(target.iterdir()):
            if marker is None or not (target / marker).exists():
                raise OutputError(f"refusing to replace {target}: it holds files but no "
                                  f"{marker or 'jetmoe-trt output'}, so it was not written by this command; remove it "
                                  "yourself or choose another output")
            other = owned(target) if owned is not None else None
            if other is not None:
                raise OutputError(f"refusing to replace {target}: it holds {other}, not this command's output; "
                                  "remove it yourself or choose another output")
    parent = where.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot write {target}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: {parent} is not writable")
    return target


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write beside `path` under a temporary name, then rename: readers see the old file or the whole new one."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` (mode as any new file), else is removed.

    OSError while writing (disk full, read-only folder) becomes OutputError naming the file."""
    path = Path(path)
    clean_stale(path.parent, path.name)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}{_TMP}{os.getpid()}-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600, and some writers replace the file after a chmod
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"could not write {path}: {_reason(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)


class atomic_directory:
    """Fill a temporary sibling folder, then swap it in for `target` on success; remove it on failure.

    OSError (disk full, permissions) inside the block becomes an OutputError naming the folder."""

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            clean_stale(self.target.parent, self.target.name)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}{_TMP}{os.getpid()}-",
                                             dir=self.target.parent))
            os.chmod(self.tmp, 0o777 & ~_UMASK)
        except OSError as e:
            raise OutputError(f"cannot write to {self.target.parent}: {_reason(e)}") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if issubclass(exc_type, OSError):
                raise OutputError(f"could not write {self.target}: {_reason(exc)}") from None
            return False
        old = None
        if self.target.exists() or self.target.is_symlink():
            old = self.target.with_name(f".{self.target.name}{_TMP}{os.getpid()}-old")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        return False


def clean_stale(folder: Path, name: str) -> list[Path]:
    """Remove the temporaries for `name` in `folder` left by processes that no longer exist; return them."""
    removed = []
    prefix = f".{name}{_TMP}"
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reason(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    return e.strerror or str(e)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
