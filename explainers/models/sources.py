"""Where a transformers model comes from: a Hugging Face Hub id, or (only when the user opts in
with SALIENCY_LAB_ALLOW_LOCAL_MODELS=1) a local folder. Shared by the model kinds that load
through transformers' Auto* classes (models/vlm.py, models/detector.py), with clip.py's rules:
local folders are a way to read arbitrary files from the server, so they are opt-in, and remote
code is never trusted.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError
from .clip import ALLOW_LOCAL_ENV, HUB_ID


@dataclass(frozen=True)
class Source:
    """A checked model source: ``source`` as transformers takes it, whether it is a folder, the
    words for messages (``where``) and the folder's model_type (None for a hub id: known once
    its config has loaded)."""

    source: str
    is_folder: bool
    where: str
    model_type: str | None = None


def locate(source: str, what: str, example: str) -> Source:
    """Check ``source`` (a hub id, or a folder when allowed) for a ``what`` model ("VLM", ...).

    Raises ModelLoadError (one sentence) for a folder while folders are disabled, a folder
    without a readable config.json, or text that is no hub id.
    """
    source = source.strip()
    is_folder = Path(source).expanduser().is_dir() or source.startswith(("/", ".", "~"))
    if not is_folder:
        if not HUB_ID.match(source):
            raise ModelLoadError(
                f"{source!r} is not a Hugging Face model id (expected 'owner/name', e.g. {example!r}) nor an existing folder"
            )
        return Source(source, False, f"the Hugging Face Hub id {source!r}")
    if os.environ.get(ALLOW_LOCAL_ENV) != "1":
        raise ModelLoadError(
            f"loading a model from a local folder ({source!r}) is disabled; set {ALLOW_LOCAL_ENV}=1 to allow it"
        )
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"the folder {source!r} has no config.json, so it is not a saved {what} model")
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as error:
        raise ModelLoadError(f"the config.json in {source!r} cannot be read: {error}") from None
    return Source(str(folder), True, f"the local folder {source!r}", str(model_type))


def load_failure(what: str, where: Source, error: BaseException) -> ModelLoadError:
    """One sentence for a load that failed: what was tried, why, and a word on being offline."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    offline = (
        ""
        if where.is_folder
        else " (this machine may be offline: only models already in the local Hugging Face cache can load)"
    )
    return ModelLoadError(f"could not load the {what} from {where.where}{offline}: {reason[:300]}")


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """transformers without its loading progress bars (the CLI's stderr is one line per note or error)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def load_pretrained(
    source: str, what: str, kind: str, example: str, families: Collection[str], auto_model: Any
) -> tuple[str, Any, Any]:
    """``(name, processor, model)`` of a transformers model from a hub id or (when allowed) a local
    folder, in fp32, through ``auto_model`` (an Auto* class) and AutoProcessor; ``name`` is what the
    adapter is called after (``kind:`` + the hub id or the folder as given). Every failure is one
    ModelLoadError sentence: a family the kind does not take (``families``, by config model_type), a
    load that failed, a processor without an image processor and a tokenizer. Never runs remote code."""
    from transformers import AutoConfig, AutoProcessor

    taken = ", ".join(sorted(families))
    where = locate(source, what, example)
    if where.is_folder and where.model_type not in families:
        raise ModelLoadError(
            f"the folder {source.strip()!r} holds a {where.model_type!r} model; the {kind} kind takes {taken} models"
        )
    try:
        config = AutoConfig.from_pretrained(where.source, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001 - turned into one plain sentence
        raise load_failure(what, where, error) from None
    if config.model_type not in families:
        raise ModelLoadError(f"{where.where} holds a {config.model_type!r} model; the {kind} kind takes {taken} models")
    try:
        import torch

        with quietly():
            processor = AutoProcessor.from_pretrained(where.source, trust_remote_code=False)
            model = auto_model.from_pretrained(where.source, trust_remote_code=False, dtype=torch.float32)
    except Exception as error:  # noqa: BLE001 - turned into one plain sentence
        raise load_failure(what, where, error) from None
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise ModelLoadError(f"{where.where} has no image processor and tokenizer for a {what}")
    return f"{kind}:{where.source if not where.is_folder else source.strip()}", processor, model
