"""Writing results so that an interrupted run never leaves a half-written file.

- ``atomic_path`` / ``write_text`` / ``write_json``: a file is written under a temporary
  name beside it (``.NAME.tmp-XXXX``) and renamed into place in one step.
- ``write_folder_atomic``: the same for a whole folder (``.NAME.tmp-XXXX``, the replaced one
  parked as ``.NAME.old-XXXX`` for the instant of the swap).
- ``output_folder``: what every command that writes a folder holds while it writes: the
  folder is created (and removed again if the command fails before writing anything), locked
  with ``flock`` on ``.mlx-interp.lock`` inside it (the kernel releases the lock when the
  process dies, so a killed run never leaves a stale lock), and cleared of the temporary
  files and folders a killed write left behind. A second writer is refused with the PID of
  the holder.
- Files and folders are created with the permissions the umask allows (0666/0777 & ~umask),
  as ``open`` and ``mkdir`` would, not the 0600/0700 of ``tempfile``.
- JSON is strict: NaN and infinity are refused with an error naming the file and the key.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".mlx-interp.lock"
_TMP, _OLD = ".tmp-", ".old-"


class FolderLockedError(ValueError):
    """Another process writes the folder (its PID is in the message)."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: str | os.PathLike, folder: bool = False) -> None:
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP}", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _honour_umask(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_folder_atomic(folder: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_folder)``, then move the finished folder to ``folder`` in one step.

    If the process dies between parking the old folder and moving the new one in, the next
    ``output_folder`` on the parent puts the old one back (see ``clean_stray``)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_TMP}", dir=folder.parent))
    try:
        write(tmp)
        for p in tmp.rglob("*"):
            _honour_umask(p, p.is_dir())
        _honour_umask(tmp, folder=True)
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_OLD}", dir=folder.parent))
            os.replace(folder, old / "x")
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _non_finite_key(obj, where: str = "") -> str | None:
    """The first key path holding NaN or infinity, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "(top level)"
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _non_finite_key(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            found = _non_finite_key(v, f"{where}[{i}]")
            if found:
                return found
    return None


def to_json(obj, path: str | os.PathLike | str = "JSON", indent: int | None = 2) -> str:
    """Strict JSON text (no NaN or infinity: a ValueError names the key)."""
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        key = _non_finite_key(obj)
        raise ValueError(
            f"refusing to write {path}: {key} is not a finite number (NaN or infinity); "
            "the computation that produced it went wrong"
        ) from None


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as strict JSON, atomically."""
    return write_text(path, to_json(obj, path) + "\n")


def read_json(path: str | os.PathLike, what_to_do: str = "delete it and run again") -> object:
    """Parse a JSON file; a one-line ValueError naming the file and what to do otherwise."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text (corrupt?); {what_to_do}") from None
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {what_to_do}"
        ) from None
    except OSError as e:
        raise ValueError(f"cannot read {path} ({e.strerror}); {what_to_do}") from None


def check_safetensors(path: str | os.PathLike, what_to_do: str) -> dict:
    """Check that a safetensors file is whole (header parses, data ends where the header says)
    without reading the tensors; return its header ({name: {dtype, shape, data_offsets}})."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("shorter than a header")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("the header runs past the end")
            header = json.loads(f.read(n))
        header.pop("__metadata__", None)
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        if 8 + n + end != size:
            raise ValueError(f"{size} bytes, the header promises {8 + n + end}")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; {what_to_do}") from None
    except (ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is truncated or corrupt ({e}); {what_to_do}") from None
    return header


def load_safetensors(path: str | os.PathLike, what_to_do: str) -> dict:
    """All tensors of a safetensors file as NumPy arrays; one-line errors for a bad file."""
    from safetensors.numpy import load_file

    check_safetensors(path, what_to_do)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - any reader failure means: the file is bad
        raise ValueError(
            f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"{what_to_do}"
        ) from None


# --------------------------------------------------------------------------- output folders
_HELD: dict[str, list] = {}  # realpath -> [fd, count]: re-entrant within one process


def _lock(path: Path, name: str = LOCK_NAME) -> None:
    key = os.path.join(os.path.realpath(path), name)
    if key in _HELD:
        _HELD[key][1] += 1
        return
    lock = path / name
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                pid = os.read(fd, 64).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise FolderLockedError(
                f"{path} is being written by another process (PID {pid}); wait for it to "
                "finish or choose another output folder"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file its last holder unlinked while we waited
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1]


def _unlock(path: Path, name: str = LOCK_NAME) -> None:
    key = os.path.join(os.path.realpath(path), name)
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[key]
        try:
            os.unlink(path / name)
        except FileNotFoundError:
            pass
        os.close(held[0])


def _locked_by_other(folder: Path) -> bool:
    lock = folder / LOCK_NAME
    if not lock.exists() or os.path.join(os.path.realpath(folder), LOCK_NAME) in _HELD:
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def clean_stray(folder: str | os.PathLike, depth: int = 3) -> list[Path]:
    """Remove the temporary files and folders that killed writes left in ``folder`` (and its
    sub-folders, ``depth`` levels, skipping those another process holds locked). A folder
    parked as ``.NAME.old-*`` whose replacement never arrived is put back as ``NAME``.
    Returns what was removed."""
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for e in entries:
        name = e.name
        if name.startswith(".") and (
            _OLD in name or _TMP in name or name.startswith(".write-test-")
        ):
            p = Path(e.path)
            if _OLD in name:
                target = folder / name[1:].split(_OLD)[0]
                if (p / "x").is_dir() and not target.exists():
                    os.replace(p / "x", target)  # the swap was cut short: keep the old one
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if depth > 0:
        for e in os.scandir(folder):
            if e.is_dir(follow_symlinks=False) and not _locked_by_other(Path(e.path)):
                removed += clean_stray(e.path, depth - 1)
    return removed


def _missing_chain(path: Path) -> list[Path]:
    """The folders of ``path`` that do not exist yet, outermost first."""
    chain = []
    p = path.absolute()
    while not p.exists():
        chain.append(p)
        if p.parent == p:
            break
        p = p.parent
    return chain[::-1]


def _writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-")
        probe.close()
    except OSError as e:
        raise ValueError(
            f"output folder {path} is not writable ({e.strerror}); choose another with --out"
        ) from None


def check_writable(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Fail early, creating nothing, if ``path`` cannot become a writable folder."""
    if path is None or not os.fspath(path).strip():
        raise ValueError(f"{flag} is empty; give a folder")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"output folder {path} is not writable (it is a file); choose a folder with {flag}"
        )
    p = path.absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ValueError(
            f"output folder {path} is not writable ({p} is a file); choose another with {flag}"
        )
    if not os.access(p, os.W_OK | os.X_OK):
        raise ValueError(f"output folder {path} is not writable ({p}); choose another with {flag}")
    return path


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create the output folder, or fail with a one-line error before any work is done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"output folder {path} is not writable (it is a file); choose a folder with --out"
        )
    _writable(path)
    return path


def missing_folders(path: str | os.PathLike) -> list[Path]:
    """The folders of ``path`` that do not exist yet, outermost first (for
    ``remove_empty_folders`` after a failed command)."""
    return _missing_chain(Path(path)) if os.fspath(path).strip() else []


def remove_empty_folders(created: list[Path]) -> None:
    """Remove the folders of ``created`` (from ``missing_folders``) that hold nothing."""
    _remove_empty(created)


@contextmanager
def output_folder(
    path: str | os.PathLike, lock_name: str = LOCK_NAME, clean: bool = True
) -> Iterator[Path]:
    """Create, lock and clean ``path`` for the duration of a write (re-entrant in a process).

    If the block raises and the folder was created here and holds nothing, it is removed
    again (with the parent folders created for it): a failed command leaves nothing behind.
    Several cooperating writers (ranks of one distributed run) pass their own ``lock_name``
    and ``clean=False``.
    """
    if path is None or not os.fspath(path).strip():
        raise ValueError("no output folder given; give a folder")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"output folder {path} is not writable (it is a file); choose a folder with --out"
        )
    created = _missing_chain(path)
    try:
        _writable(path)
        _lock(path, lock_name)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        if clean:
            clean_stray(path)
        yield path
    except BaseException:
        _unlock(path, lock_name)
        _remove_empty(created)
        raise
    else:
        _unlock(path, lock_name)


def _remove_empty(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            entries = [e for e in os.listdir(p) if not (e.startswith(".mlx-interp") and e.endswith(".lock"))]  # fmt: skip
            if entries or any(k.startswith(os.path.realpath(p) + os.sep) for k in _HELD):
                return
            for e in os.listdir(p):
                (p / e).unlink(missing_ok=True)
            p.rmdir()
        except OSError:
            return
