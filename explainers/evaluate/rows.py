"""rows.csv: one row per image x method x scoring substrate (and per image x scoring substrate
for the random reference), appended as each image finishes, so that an interrupted run leaves a
valid file and a rerun skips what is done. Each map is made once and its curves are drawn on
every scoring substrate. sanity.csv (``evaluate --sanity``): one row per image x method x stage
of the model-randomisation cascade, and per image x method x reference map.

A row's key is (image, prompt, contrast, target, method, substrate) -- ``target`` is the manifest
row's own target parameters (a VLM's answer, a detector's box; "" where it gives none), so one
photo can be evaluated on several answers or boxes; ``explained`` is the target the model
explained (its JSON: the model's own answer, its box), for the kinds that resolve one. Every row
also carries the hash of the run's model and parameters, and a folder holds the rows of one
configuration only (``check_config`` refuses another), so results of different parameters never
mix. The methods and the scoring substrates are not part of the configuration: adding some
computes only their rows. A folder written by an older format (``ROWS_FORMAT``: no substrate or no
target column) is refused, saying how to rerun.
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
# 2: a row per scoring substrate, clipped AUCs with the unclipped beside them; 3: the row's target in the key
ROWS_FORMAT = 3
ITEM_KEY = ("image", "prompt", "contrast", "target")  # manifest.Item.key
ITEM = len(ITEM_KEY)  # a row key's first ITEM fields are its manifest row's
KEY = (*ITEM_KEY, "method", "substrate")
CURVE_COLUMNS = (  # types.Curves.figures(), on the row's scoring substrate
    "insertion_auc",
    "deletion_auc",
    "srg",
    "srg_unclipped",
    "insertion_auc_unclipped",
    "deletion_auc_unclipped",
    "insertion_peak",
    "insertion_peak_fraction",
    "overshoot_area",
    "deletion_floor",
    "insertion_auc_probability",
    "deletion_auc_probability",
)
RESULT_COLUMNS = (
    *CURVE_COLUMNS,
    "beats_random",
    "explained",  # the target the model explained (its JSON: its own answer, its box); blank for a prompt
    "score",  # the photo's score of the target
    "probability",  # the target's probability on the photo, in [0, 1] (blank: the model gives none)
    "full_score",  # the photo's score as the curves saw it (the curves' 1)
    "substrate_score",  # the fully removed image's score on this substrate (the curves' 0)
    "score_meaning",  # what the score is (log-probability, logit, probability): the model's word
    "min_span",  # full_score - substrate_score below this: the photo is ill-conditioned on this substrate
    "seconds",
    "forward_passes",
    "backward_passes",
    "curve_seconds",
    "curve_forward_passes",
    "error",
)
CLASS_COLUMNS = ("top1", "correct")  # with a class column: the model's top-1 class and whether it is right
BASE_COLUMNS = KEY + RESULT_COLUMNS + ("params_hash",)
RESERVED = BASE_COLUMNS + CLASS_COLUMNS
FLOAT_COLUMNS = (
    *CURVE_COLUMNS,
    "score",
    "probability",
    "full_score",
    "substrate_score",
    "min_span",
    "seconds",
    "curve_seconds",
)
INT_COLUMNS = ("beats_random", "forward_passes", "backward_passes", "curve_forward_passes", "top1", "correct")
# sanity.csv (evaluate --sanity): kind "stage" (a stage of the cascade: stage_index from the top, 0 first)
# or "reference" (stage "centre" or "edges": the trained map against a map that knows nothing of the model).
SANITY_KEY = (*ITEM_KEY, "method", "kind", "stage")
SANITY_COLUMNS = SANITY_KEY + ("stage_index", "spearman", "ssim", "blank", "error", "params_hash")
SANITY_FLOAT_COLUMNS = ("spearman", "ssim")
SANITY_INT_COLUMNS = ("stage_index", "blank")
CONFIG_FILE = "params.json"
LOCK_FILE = ".lock"
# Parameters that are not part of a folder's configuration: more of them only adds rows.
UNHASHED = ("score_substrates",)


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


def check_format(folder: Path, rows_file: str) -> None:
    """Refuse (UserError, one sentence saying how to rerun) a folder written by an older version
    of the rows: format 1 (one substrate per row, AUCs of the unclipped curves, no substrate
    column) or format 2 (no target column: every row's key lacks the manifest row's target)."""
    path, rows = folder / CONFIG_FILE, folder / rows_file
    header = read_rows(rows)[0]
    try:
        written = json.loads(path.read_text()).get("rows_format") if path.is_file() else ROWS_FORMAT
    except ValueError:
        written = ROWS_FORMAT  # check_config names the broken file
    if (header and "substrate" not in header) or written in (None, 1):
        what = "one substrate per row, unclipped AUCs"
    elif (header and "target" not in header) or written != ROWS_FORMAT:
        what = "no target column in the rows' key"
    else:
        return
    raise UserError(
        f"{folder} holds rows of an older format ({what}), which cannot be upgraded without the curves; rerun "
        f"the same command with another --out folder (or delete {rows} and {path} to compute them again here)"
    )


def check_config(folder: Path, model: str, params: dict[str, Any]) -> str:
    """Record the run's configuration in ``folder/params.json``, or refuse (UserError) when the
    folder already holds results of another model or other parameters. Returns the hash.
    The parameters in UNHASHED (the scoring substrates) are left out of it."""
    params = {k: v for k, v in params.items() if k not in UNHASHED}
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
            json.dumps(
                {"model": model, "params": params, "params_hash": digest, "rows_format": ROWS_FORMAT},
                indent=1,
                sort_keys=True,
                default=list,
            )
            + "\n"
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


def typed(
    row: dict[str, str], floats: tuple[str, ...] = FLOAT_COLUMNS, ints: tuple[str, ...] = INT_COLUMNS
) -> dict[str, Any]:
    """A row read from the file with its numbers as numbers (blank -> None)."""
    out: dict[str, Any] = dict(row)
    for column in floats:
        if column in out:
            out[column] = float(out[column]) if out[column] not in ("", None) else None
    for column in ints:
        if column in out:
            out[column] = int(float(out[column])) if out[column] not in ("", None) else None
    return out


def row_key(row: dict[str, Any], key: tuple[str, ...] = KEY) -> tuple[str, ...]:
    return tuple(str(row.get(k, "")) for k in key)


def latest(
    rows: Iterable[dict[str, str]], digest: str, key: tuple[str, ...] = KEY
) -> dict[tuple[str, ...], dict[str, str]]:
    """The last row of each key among the rows of this configuration (a retried error is
    superseded by the row appended after it)."""
    return {row_key(row, key): row for row in rows if row.get("params_hash") == digest}


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
