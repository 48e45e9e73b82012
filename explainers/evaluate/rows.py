"""rows.csv: one row per image x method (and one for the random reference), appended as each
image finishes, so that an interrupted run leaves a valid file and a rerun skips what is done.

A row's key is (image, prompt, contrast, target, method) -- ``target`` is the manifest row's
target parameters (a VLM's answer, a detector's box), a column only for those model kinds; every row also carries the hash of the run's
model and parameters, and a folder holds the rows of one configuration only (``check_config``
refuses another), so results of different parameters never mix.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import UserError

RANDOM = "random"  # the method name of the random reference's row
KEY = ("image", "prompt", "contrast", "target", "method")
RESULT_COLUMNS = (
    "insertion_auc",
    "deletion_auc",
    "srg",
    "beats_random",
    "score",
    "seconds",
    "forward_passes",
    "backward_passes",
    "curve_seconds",
    "curve_forward_passes",
    "error",
)
CLASS_COLUMNS = ("top1", "correct")  # with a class column: the model's top-1 class and whether it is right
BASE_COLUMNS = ("image", "prompt", "contrast", "method") + RESULT_COLUMNS + ("params_hash",)
# With a model kind that resolves its target: the manifest's target parameters (part of the key),
# the target explained (its JSON: the model's answer, its box) and its probability.
TARGET_COLUMNS = ("target", "explained", "probability")
RESERVED = BASE_COLUMNS + CLASS_COLUMNS + TARGET_COLUMNS
FLOAT_COLUMNS = ("insertion_auc", "deletion_auc", "srg", "score", "probability", "seconds", "curve_seconds")
INT_COLUMNS = ("beats_random", "forward_passes", "backward_passes", "curve_forward_passes", "top1", "correct")
CONFIG_FILE = "params.json"
LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold ``folder`` for this run: a second run on the same folder at the same time (which would
    interleave rows and cut the other's lines as "partial") is refused with a UserError. The OS
    drops the lock when the process ends, however it ends."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one run per folder is then the user's to keep)
        yield
        return
    with open(folder / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"another run is writing to {folder} right now; wait for it to finish, or use another --out folder"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def params_hash(model: str, params: dict[str, Any]) -> str:
    """A short hash of the model's name and every parameter: rows of other settings never match it."""
    text = json.dumps({"model": model, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_config(folder: Path, model: str, params: dict[str, Any]) -> str:
    """Record the run's configuration in ``folder/params.json``, or refuse (UserError) when the
    folder already holds results of another model or other parameters. Returns the hash."""
    digest = params_hash(model, params)
    path = folder / CONFIG_FILE
    if path.is_file():
        try:
            before = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path} is not valid JSON; delete it, or use another --out folder") from None
        if before.get("params_hash") != digest:
            was = {"model": before.get("model"), **before.get("params", {})}
            now = {"model": model, **params}
            differ = [f"{k} {was.get(k)!r} there, {now.get(k)!r} here" for k in now if was.get(k) != now.get(k)]
            raise UserError(
                f"{folder} holds results of other settings ({'; '.join(differ) or 'another version'}); "
                "use another --out folder, or the same settings to resume"
            )
    else:
        path.write_text(
            json.dumps({"model": model, "params": params, "params_hash": digest}, indent=1, sort_keys=True) + "\n"
        )
    return digest


def repair(path: Path) -> bool:
    """Cut a partial last line (a hard kill in the middle of a write). Returns True if it cut one."""
    if not path.is_file():
        return False
    with open(path, "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return False
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return False
        # The partial line starts after the last newline; look for it from the end, 64 kB at a time.
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            handle.seek(start)
            cut = handle.read(end - start).rfind(b"\n")
            if cut >= 0:
                handle.truncate(start + cut + 1)
                break
            end = start
        else:
            handle.truncate(0)  # not even the header is whole
        return True


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a rows.csv; rows with a wrong number of fields (damaged) are left out."""
    if not path.is_file() or path.stat().st_size == 0:
        return [], []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = [dict(zip(header, fields)) for fields in reader if len(fields) == len(header)]
    return header, rows


def typed(row: dict[str, str]) -> dict[str, Any]:
    """A row read from the file with its numbers as numbers (blank -> None)."""
    out: dict[str, Any] = dict(row)
    for column in FLOAT_COLUMNS:
        if column in out:
            out[column] = float(out[column]) if out[column] not in ("", None) else None
    for column in INT_COLUMNS:
        if column in out:
            out[column] = int(float(out[column])) if out[column] not in ("", None) else None
    return out


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The row's key; a file without a target column keys its rows with target "" (as their items)."""
    return tuple(str(row.get(k) or "") for k in KEY)


def latest(rows: Iterable[dict[str, str]], digest: str) -> dict[tuple[str, ...], dict[str, str]]:
    """The last row of each key among the rows of this configuration (a retried error is
    superseded by the row appended after it)."""
    return {row_key(row): row for row in rows if row.get("params_hash") == digest}


class RowsFile:
    """rows.csv opened for appending: its header is fixed by the run that created it."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.path = path
        self.repaired = repair(path)
        header, _ = read_rows(path)
        if header:
            missing = [c for c in columns if c not in header]
            if missing:
                raise UserError(
                    f"{path} was started without the column(s) {', '.join(missing)}; use another "
                    "--out folder (or the same manifest columns and class column)"
                )
            self.columns = header
        else:
            self.columns = list(columns)
        self._handle = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - held until close()
        self._writer = csv.DictWriter(
            self._handle, fieldnames=self.columns, extrasaction="ignore", restval="", lineterminator="\n"
        )
        if not header:
            self._handle.truncate(0)  # a file holding only a cut header line
            self._writer.writeheader()
            self._flush()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write the rows and push them to disk, so a kill after this call loses none of them."""
        self._writer.writerows([{k: _cell(v) for k, v in row.items()} for row in rows])
        self._flush()

    def _flush(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RowsFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value)  # every digit: a rerun's summary equals the first run's
    return value


def error_text(error: BaseException | None) -> str:
    """One line for the error column."""
    if error is None:
        return ""
    text = " ".join(str(error).split())
    return text if isinstance(error, UserError) else f"{type(error).__name__}: {text}"
