"""Bottom layer: atomic writes and hashing, shared by every stage that writes an artifact.

Artifacts appear complete or not at all: files are written to a temporary name beside their target and
renamed into place (``os.replace`` is atomic on one file system); directories are built under a
temporary name and renamed. Files get the umask's permissions, not ``mkstemp``'s private 0600.

A temporary name carries its writer (``.NAME.edgekd-HOST-PID.XXXX.tmp``): a failure removes it, and a process
that was killed cannot, so the next write of the same target removes the temporaries of writers on this host
that no longer run (:func:`reap_stale`); a live writer's, or another host's, are left alone.

Example:
    >>> atomic_write_text("runs/x/config.yaml", "epochs: 3\\n")
    >>> with atomic_dir("runs/bundle") as tmp:
    ...     (tmp / "model.onnx").write_bytes(b"...")
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from edgekd.errors import ArtifactError, InvalidInputError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_dir",
    "sha256_file",
    "umask",
    "check_output",
    "check_report_path",
    "is_edgekd_artifact",
    "replace_dir",
    "ARTIFACT_MARKERS",
    "MARKER_FILE",
    "reap_stale",
    "temp_prefix",
]


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname())[:40].strip("-") or "host"


def temp_prefix(name: str) -> str:
    """The prefix of a temporary sibling of ``name`` written by this process (see the module docstring)."""
    return f".{name}.edgekd-{_host()}-{os.getpid()}."


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def reap_stale(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed writers on this host; returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    host, removed = _host(), []
    pattern = re.compile(re.escape(f".{path.name}.edgekd-{host}-") + r"(\d+)\.[^.]*\.tmp")
    for p in path.parent.glob(glob.escape(f".{path.name}.edgekd-{host}-") + "*.tmp"):
        m = pattern.fullmatch(p.name)
        if not m or int(m.group(1)) == os.getpid() or _running(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reap_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes files private (0600); artifacts are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class atomic_dir:
    """Context manager: build a directory under a temporary name, rename it into place on success.

    On an exception the temporary directory is removed, so no half-written artifact is left. An
    existing target is replaced only when ``overwrite`` is true.

    Example:
        >>> with atomic_dir("out/bundle") as tmp:
        ...     (tmp / "model.onnx").write_bytes(b"...")
    """

    def __init__(self, target: str | os.PathLike, *, overwrite: bool = True) -> None:
        self.target = Path(target)
        self.overwrite = overwrite

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            raise ArtifactError(f"{self.target} already exists", "choose another --out or pass --overwrite")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        reap_stale(self.target)
        self.tmp = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=temp_prefix(self.target.name), suffix=".tmp"))
        os.chmod(self.tmp, 0o777 & ~umask())  # mkdtemp makes directories private (0700)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        replace_dir(self.tmp, self.target)


# Files that mark a directory as written by edgekd (model directory, bundle, teacher cache, run work dir).
ARTIFACT_MARKERS = ("edgekd.json", "manifest.json", ".edgekd")
MARKER_FILE = ".edgekd"


def is_edgekd_artifact(path: str | os.PathLike) -> bool:
    """True for a directory edgekd wrote (it holds one of :data:`ARTIFACT_MARKERS`)."""
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in ARTIFACT_MARKERS)


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output(
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: tuple[str | os.PathLike | None, ...] = (),
    flag: str = "--out",
) -> Path:
    """Validate an output directory before any work starts (the rule every writing command follows).

    * an existing non-empty ``out`` is refused unless ``overwrite``;
    * ``overwrite`` never replaces what edgekd did not write, nor an input of the command or a folder
      holding one;
    * a parent that is a file, or a folder that cannot be written, is refused now, not after training.

    Raises:
        InvalidInputError: exists without ``overwrite``, is or contains an input, is not an edgekd artifact (3).
        ArtifactError: a parent is a regular file or is not writable (4).
    """
    out = Path(out)
    resolved = out.resolve()
    for given in inputs:
        if given is None:
            continue
        src = Path(given).resolve()
        if _inside(src, resolved):
            what = "is" if src == resolved else "contains"
            raise InvalidInputError(f"{flag} {out} {what} the input {given}", f"choose an {flag} outside the input")
    if out.is_file() or out.is_symlink() and not out.exists():
        raise InvalidInputError(f"{flag} {out} is a file, not a directory", f"choose another {flag}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InvalidInputError(
                f"{flag} {out} already exists and is not empty",
                "choose another path, or pass --overwrite to replace an earlier edgekd output",
            )
        if not is_edgekd_artifact(out):
            raise InvalidInputError(
                f"{flag} {out} holds files that edgekd did not write; --overwrite only replaces edgekd outputs",
                f"choose another {flag}",
            )
    _check_parent_writable(out, flag)
    return out


def _check_parent_writable(out: Path, flag: str, *, parents_only: bool = False) -> None:
    for parent in [*([] if parents_only else [out]), *out.parents]:
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise ArtifactError(f"{flag} {out}: {parent} is a file, not a folder", f"choose another {flag}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ArtifactError(f"{flag} {out}: cannot write in {parent} (permission denied)", f"choose another {flag}")
        return


def check_report_path(
    path: str | os.PathLike | None,
    flag: str = "--json",
    *,
    overwrite: bool = False,
    inputs: tuple[str | os.PathLike | None, ...] = (),
) -> None:
    """A report file (``--json``, ``--csv``...) must be writable, before any work starts.

    Refused: a folder; an existing file unless ``overwrite`` (a report never replaces a file silently); an input
    of the command, even with ``overwrite``; a parent that is a file or cannot be written.

    Raises:
        InvalidInputError: a folder, an existing file without ``overwrite``, an input (exit 3).
        ArtifactError: a parent is a regular file or is not writable (4).
    """
    if path is None or str(path) == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise InvalidInputError(f"{flag} {p} is a folder", f"give {flag} a file name, e.g. {p / 'report.json'}")
    for given in inputs:
        if given is not None and Path(given).exists() and p.exists() and p.resolve() == Path(given).resolve():
            raise InvalidInputError(f"{flag} {p} is an input of this command", f"choose another {flag}")
    if p.exists() and not overwrite:
        raise InvalidInputError(
            f"{flag} {p} already exists", f"choose another {flag}, or pass --overwrite to replace it"
        )
    _check_parent_writable(p, flag, parents_only=True)


def replace_dir(src: Path, target: Path) -> None:
    """Move the finished directory ``src`` to ``target``, replacing an earlier edgekd artifact there."""
    target = Path(target)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(src, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, target)
