"""Reading and writing the project's JSON and weight files: clear errors, no half-written files."""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from lavin_lightning.errors import DataError


def read_json(path: str | os.PathLike, expected: str) -> object:
    """Parse a JSON file; a DataError naming the path and what it should hold otherwise."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: expected {expected}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                        f"expected {expected}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e}); expected {expected}") from None


def current_umask() -> int:
    """The process's umask, read without changing it where the system says (Linux's
    /proc/self/status): setting it to read it back would, for an instant, apply to files that
    other threads create."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions `open()` would give a new file (0o666 less the umask): tempfile creates
    its files 0o600 and its directories 0o700 (as safetensors its files), which a rename would
    carry into place."""
    return 0o666 & ~current_umask()


def new_directory_mode() -> int:
    """The permissions `mkdir()` would give a new directory (0o777 less the umask)."""
    return 0o777 & ~current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """`write(tmp)` into a temporary file beside `path`, then rename it into place; the file gets
    the permissions a plain `open()` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # After writing: some writers (safetensors) replace the file with one of mode 0o600.
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _remove_stale(parent: Path, name: str) -> None:
    """Temporary directories that a killed `write_directory` of `name` left in `parent`."""
    for entry in parent.glob(f".{glob.escape(name)}.*"):
        if entry.suffix in (".tmp", ".old") and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


def _follow_umask(directory: Path) -> None:
    os.chmod(directory, new_directory_mode())
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            os.chmod(os.path.join(root, name), new_directory_mode())
        for name in files:
            os.chmod(os.path.join(root, name), new_file_mode())


def write_directory(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write the directory `path` as one unit: `write(tmp)` fills a new temporary directory beside
    it, which is then renamed into place. Readers see the old directory or the new one, never a
    mix; an exception in `write` leaves `path` as it was. The directory and its files get the
    permissions a plain `mkdir()` and `open()` would give them.

    An existing `path` is replaced with everything in it (the caller checks that it holds only
    what it wrote before): it is renamed aside, the new one renamed in, the old one removed. A
    kill between those two renames leaves no `path`, the old directory whole in `.NAME.*.old/` and
    the new one whole in `.NAME.*.tmp`; the next `write_directory` of the same `path` removes both,
    as it removes what a kill during `write` left. Two processes writing the same `path` at once
    are not supported (one of them fails).
    """
    path = Path(path)
    parent = path.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(parent, path.name)
    tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        _follow_umask(tmp)
        if not path.exists():
            os.rename(tmp, path)
            return path
        aside = Path(tempfile.mkdtemp(dir=parent, prefix=f".{path.name}.", suffix=".old"))
        os.rename(path, aside / path.name)
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(aside / path.name, path)  # the old one back in place
            os.rmdir(aside)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_json(path: str | os.PathLike, data: object, indent: int = 2) -> Path:
    """Atomically write `data` as UTF-8 JSON."""
    text = json.dumps(data, indent=indent, ensure_ascii=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
