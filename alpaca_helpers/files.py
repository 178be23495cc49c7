"""Files that survive a crash: atomic writes and folders, durable JSONL appends, and the readers that skip
a line torn by a crash."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def json_lines(text: str, path: Path) -> list[tuple[int, Any]]:
    """(line number, object) for each non-blank line of JSONL text; a malformed line is a ValueError
    naming the file and line.

    Lines end at "\n" only: JSON written with ensure_ascii=False may hold U+2028 or U+0085 inside a
    string, where str.splitlines would also break.
    """
    objects = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            objects.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {lineno}: malformed JSON ({e.msg})") from None
    return objects


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that readers see the old or the new content, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside `folder` to write into; when the block ends without an
    error it replaces `folder` in one rename, otherwise it is removed. A crash leaves the old folder (or
    none), never half of a new one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; these folders are meant to be shared like the Hub cache
    try:
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def complete_lines(path: str | os.PathLike) -> str:
    """A line-oriented file's text up to its last newline ("" if absent).

    Appends are whole lines, so text after the last newline can only be a line torn by a crash: left out.
    """
    path = Path(path)
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    return text[: text.rfind("\n") + 1]


def read_complete_jsonl(path: str | os.PathLike) -> list[Any]:
    """The objects of a JSONL file written by `append_durable` (a line torn by a crash is left out)."""
    return [obj for _, obj in json_lines(complete_lines(path), Path(path))]


def append_durable(path: str | os.PathLike, lines: str) -> None:
    """Append one or more lines (no trailing newline needed) in one write, then fsync.

    A torn last line left by an earlier crash is cut off first, so the new lines start clean. A crash
    during this call can leave only a prefix of `lines`, the last of them torn (`complete_lines` skips it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
        f.seek(0, os.SEEK_END)
        f.write(lines.rstrip("\n").encode("utf-8") + b"\n")
        f.flush()
        os.fsync(f.fileno())
