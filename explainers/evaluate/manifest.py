"""The manifest: a CSV of photos and prompts -> the jobs of a data-set run.

Columns: ``image`` (a path, relative to the manifest's folder, or absolute) and ``prompt``;
optional ``contrast`` (contrast prompts separated by ``|``). Columns named like the model
kind's target parameters (a VLM's ``answer``, ``answer_token``; a detector's ``box``,
``box_threshold``) give that row's target (a blank cell: the model decides). Every other column,
and those, is carried unchanged to the rows (a label, a split, ...).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

REQUIRED = ("image", "prompt")
CONTRAST_SEPARATOR = "|"


@dataclass(frozen=True)
class Item:
    """One manifest row: the photo as the manifest names it (the key in rows.csv), where it is,
    the prompt and contrast prompts as written, and the carried columns."""

    image: str
    path: str
    prompt: str
    contrast: str = ""
    extras: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # the row's target parameters (non-blank cells)

    @property
    def target(self) -> str:
        """The row's target parameters as one text (``answer=a cat``), "" when it gives none."""
        return "; ".join(f"{name}={value}" for name, value in sorted(self.options.items()))

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.image, self.prompt, self.contrast, self.target)

    @property
    def contrast_prompts(self) -> list[str]:
        return [c for c in self.contrast.split(CONTRAST_SEPARATOR) if c.strip()]


@dataclass(frozen=True)
class Manifest:
    """The items to evaluate (first ``limit`` rows, repeats dropped), the carried column names,
    and notes for the user (e.g. which rows repeated an earlier one)."""

    path: Path
    items: tuple[Item, ...]
    extra_columns: tuple[str, ...]
    notes: tuple[str, ...] = ()


def read_manifest(
    path: str | os.PathLike,
    limit: int | None = None,
    reserved: tuple[str, ...] = (),
    option_columns: tuple[str, ...] = (),
) -> Manifest:
    """Read ``path`` -> Manifest. Raises UserError (one sentence) when the file cannot be read,
    lacks a required column, has none of its rows, or carries a column named like one of
    ``reserved`` (the columns rows.csv writes itself). Columns among ``option_columns`` (the
    model kind's target parameters) give each row's ``options``."""
    path = Path(path)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a whole number of at least 1, not {limit!r}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            records = list(reader)
    except FileNotFoundError:
        raise UserError(f"there is no manifest file {str(path)!r}") from None
    except IsADirectoryError:
        raise UserError(f"the manifest {str(path)!r} is a folder; give the CSV file inside it") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise UserError(f"the manifest {str(path)!r} cannot be read as a UTF-8 CSV file: {error}") from None
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise UserError(
            f"the manifest {path.name!r} has no {' or '.join(repr(c) for c in missing)} column "
            f"(it has: {', '.join(columns) or 'no header'}); it needs image and prompt, "
            "optionally contrast"
        )
    if len(set(columns)) != len(columns):
        raise UserError(f"the manifest {path.name!r} names a column twice: {', '.join(columns)}")
    extras = tuple(c for c in columns if c not in (*REQUIRED, "contrast"))
    clash = [c for c in extras if c in reserved]
    if clash:
        raise UserError(
            f"the manifest column(s) {', '.join(repr(c) for c in clash)} clash with columns the "
            "results write; rename them in the manifest"
        )
    folder = path.resolve().parent
    items: list[Item] = []
    seen: dict[tuple[str, str, str, str], int] = {}
    notes: list[str] = []
    for line, record in enumerate(records, start=2):  # line 1 is the header
        record = {(k or "").strip(): (v or "") for k, v in record.items() if k is not None}
        image = record.get("image", "").strip()
        if not image and not any(v.strip() for v in record.values()):
            continue  # a blank line
        item = Item(
            image=image,
            path=str(folder / image) if image else "",
            prompt=record.get("prompt", ""),
            contrast=record.get("contrast", "").strip(),
            extras={c: record.get(c, "") for c in extras},
            options={c: record[c].strip() for c in option_columns if record.get(c, "").strip()},
        )
        if item.key in seen:
            notes.append(
                f"manifest line {line} repeats line {seen[item.key]} (same image, prompt, contrast and target) "
                "and is skipped"
            )
            continue
        seen[item.key] = line
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise UserError(f"the manifest {path.name!r} has no rows")
    return Manifest(path, tuple(items), extras, tuple(notes))
