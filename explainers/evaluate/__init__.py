"""Data-set evaluation: a manifest of photos and prompts -> every method's faithfulness on each
photo and scoring substrate (DIR/rows.csv) -> the summary a paper would print (DIR/summary.json,
.md, .png), per scoring substrate, the correctly classified photos apart from the wrong ones.

    from explainers.evaluate import evaluate
    summary = evaluate("photos/manifest.csv", "out/run1", methods="gradcam,ig,region", limit=20,
                       class_column="imagenet_index", score_substrates="black,blur")
    summary.substrates["blur"]["groups"]["correct"]["1"]["methods"]["region"]["srg_mean"]

- Each map is made once (with ``substrate``) and its curves drawn on every scoring substrate
  (``score_substrates``; default: the maps' substrate and blur, so every map is also judged on a
  substrate it was not made with; each substrate more costs the curves once more, the maps not).

The command line is ``python -m explainers.evaluate MANIFEST.csv --out DIR`` (``--help``).

- Resumable: rows are appended and flushed as each image finishes; a rerun with the same folder
  computes only the missing rows (no forward pass for the others) and rewrites the summary. A
  partial last line left by a hard kill is cut on the next run.
- One configuration per folder: the folder records the model and every parameter (params.json,
  and a hash on every row); a rerun with other settings is refused, naming what differs. Adding
  methods or manifest rows is not another configuration: only the new rows are computed.
- Failed images (unreadable, bad prompt) get rows with an ``error`` and the run goes on; they
  count as done (``retry_errors=True`` computes them again: the newer row wins).
- Workers: in this process (``workers=1``), in local processes (``workers=N``), or on a Ray
  actor pool (``ray=True`` for a local Ray, or a cluster address); each worker loads the model
  once, on its device, with ``threads`` torch threads.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..api import (
    PAPER_CURVE_STEPS,
    clean_methods,
    clean_model,
    clean_options,
    split_options,
    target_params,
    validate_params,
)
from ..errors import UserError
from ..models import DEVICES, ModelAdapter, resolve_device
from ..types import _jsonable
from . import report, stats
from .manifest import Manifest, read_manifest
from .rows import (
    BASE_COLUMNS,
    CLASS_COLUMNS,
    ITEM,
    RANDOM,
    RESERVED,
    SANITY_COLUMNS,
    SANITY_FLOAT_COLUMNS,
    SANITY_INT_COLUMNS,
    SANITY_KEY,
    RowsFile,
    check_config,
    check_format,
    folder_lock,
    latest,
    read_rows,
    typed,
)
from .worker import SANITY_TABLE, Job, WorkerConfig

ROWS, SUMMARY_JSON, SUMMARY_MD, SUMMARY_PNG = "rows.csv", "summary.json", "summary.md", "summary.png"
SANITY_ROWS = "sanity.csv"
# Scored besides the maps' own substrate by default (and black where the maps are made on blur).
OTHER_SUBSTRATE = {"blur": "black"}
DEFAULT_OTHER_SUBSTRATE = "blur"


def default_substrates(substrate: str) -> list[str]:
    """evaluate's scoring substrates when none are asked: the maps' own, then one they were not made with."""
    return [substrate, OTHER_SUBSTRATE.get(substrate, DEFAULT_OTHER_SUBSTRATE)]


@dataclass(frozen=True)
class Summary:
    """A data-set run's summary (what summary.json holds; see ``to_dict``).

    ``substrates[name]``: per scoring substrate (in the order asked, the first being the
    headline), the block ``methods``, ``random``, ``pairs``, ``vs_random``, ``groups``,
    ``ill_conditioned``; the top-level fields of those names are the first substrate's.
    ``methods[m]``: n, srg_mean, srg_ci [lo, hi] (clipped curves), srg_unclipped_mean/ci,
    insertion_mean/ci, deletion_mean/ci, insertion_peak_mean/ci, overshoot_area_mean,
    deletion_floor_mean, insertion/deletion_auc_probability_mean/ci (raw probability: the
    SMDL/RISE numbers), peak_above_photo (share of images), beats_random (share of images),
    seconds_mean, forward_passes_mean, ...; ``random``: the same for the random reference;
    ``pairs["a vs b"]``: srg_diff_mean, ci, p_wilcoxon, first_higher (share of images where a's
    SRG is higher), srg_unclipped_diff_mean/ci; ``vs_random[m]``: the same against the random
    reference; ``groups[column][value]``: all of that on the images with that value (with a
    class column always ``groups["correct"]["1"]`` and ``["0"]``); ``sanity`` (with
    ``sanity=True``): per method the cascade's per-stage correlation means with CIs, the blank
    share and the reference rows; ``params``: the model, the methods, every parameter, the seed
    and the bootstrap's settings; ``run``: how this run went (workers, threads, devices, images
    computed and skipped).
    """

    n: int
    n_images: int
    n_failed: int
    n_missing: int  # images without every row: only while a run is interrupted
    methods: dict[str, dict[str, Any]]
    random: dict[str, Any]
    pairs: dict[str, dict[str, Any]]
    vs_random: dict[str, dict[str, Any]]
    groups: dict[str, dict[str, Any]]
    errors: list[dict[str, str]]
    ill_conditioned: list[dict[str, str]]  # finished images left out: the photo barely beats the substrate
    params: dict[str, Any]
    run: dict[str, Any]
    out: Path
    notes: tuple[str, ...] = field(default=())
    substrates: dict[str, dict[str, Any]] = field(default_factory=dict)
    sanity: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON of summary.json (non-finite numbers -> null)."""
        return _jsonable(
            {
                "n": self.n,
                "n_images": self.n_images,
                "n_failed": self.n_failed,
                "n_missing": self.n_missing,
                "methods": self.methods,
                "random": self.random,
                "pairs": self.pairs,
                "vs_random": self.vs_random,
                "groups": self.groups,
                "errors": self.errors,
                "n_ill_conditioned": len(self.ill_conditioned),
                "ill_conditioned": self.ill_conditioned,
                "substrates": self.substrates,
                **({"sanity": self.sanity} if self.sanity is not None else {}),
                "params": self.params,
                "run": self.run,
                "notes": list(self.notes),
            }
        )

    def table(self) -> str:
        """The markdown of summary.md."""
        return report.markdown(self.to_dict(), self.params["methods"])


def _check_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a whole number of at least 1, not {value!r}")
    return int(value)


def _device(device: Any, ray: bool) -> str:
    """The device as workers get it. Without Ray it is resolved here (so a missing GPU is refused
    before any work); with Ray the cluster decides, so only the spelling is checked."""
    text = str(device if device is not None else "auto").strip().lower()
    if text.split(":")[0] not in DEVICES:
        raise UserError(f"the device must be auto, cpu or cuda (e.g. cuda:0), not {str(device)[:40]!r}")
    if ray:
        return "cuda" if text.startswith("cuda") else text
    resolved = resolve_device(text)
    return str(resolved) if resolved.type == "cuda" and ":" in text else resolved.type


def evaluate(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | ModelAdapter = "bundled",
    methods: str | Sequence[str] | None = None,
    device: str = "auto",
    limit: int | None = None,
    workers: int | None = None,
    ray: bool | str | None = None,
    threads: int | None = None,
    class_column: str | None = None,
    group_by: Sequence[str] = (),
    retry_errors: bool = False,
    compute: bool = True,
    resamples: int = stats.RESAMPLES,
    progress: bool | None = None,
    sanity: bool = False,
    **params: Any,
) -> Summary:
    """Evaluate every method on every photo of ``manifest`` and summarise; writes ``out``/rows.csv,
    summary.json, summary.md and summary.png. Returns the Summary.

    ``model``: a registered name (``"bundled"``, ``"clip:<hub id>"``), or a ready adapter (this
    process only). ``methods``: names or ``"gradcam,ig"`` (default: the registry's defaults).
    ``params``: any of ``explainers.api.PARAMS`` (curve_steps defaults to 50, the CLI's; every
    other to its spec's default), and the model kind's target parameters for every row (a VLM's
    ``max_new_tokens``, a detector's ``box_threshold``; a manifest column of that name, e.g.
    ``answer`` or ``box``, sets a row's own). ``limit``: the first N manifest rows. ``workers``: local worker
    processes, or Ray actors with ``ray``. ``ray``: True or "local" for a local Ray, or a
    cluster's address. ``threads``: torch threads per worker (default: this process's threads
    divided among the workers; 1 per Ray actor). ``class_column``: a manifest column holding
    each photo's true class index, for classifier models: rows get ``top1`` and ``correct``, and
    the summary always has the groups ``correct`` "1" and "0" (the headline is the correct ones).
    ``group_by``: columns (manifest ones, or ``correct``) whose values get their own tables.
    ``score_substrates`` (in ``params``): the substrates the curves are drawn on, the first being
    the headline (default: ``substrate`` and blur, or black where ``substrate`` is blur).
    ``sanity``: also the model-randomisation test on every photo (DIR/sanity.csv and the
    summary's ``sanity``; every method again per stage of the cascade: several times the cost).
    ``compute=False`` only summarises the rows already in ``out`` (a long run's progress so far).
    ``progress``: a tqdm bar (None: only on a terminal). Raises UserError on bad input.
    """
    started = time.perf_counter()
    names = clean_methods(methods)
    given = {k: v for k, v in params.items() if v is not None}
    options, given = split_options(model, given)
    checked: dict[str, Any] = validate_params({"curve_steps": PAPER_CURVE_STEPS, **given})
    options = clean_options(model, options)
    option_specs = target_params(model)
    if not checked["score_substrates"]:
        checked["score_substrates"] = tuple(default_substrates(checked["substrate"]))
    substrates = list(checked["score_substrates"])
    if not isinstance(sanity, (bool, np.bool_)):
        raise UserError(f"sanity must be True or False, not {sanity!r}")
    workers = _check_count("workers", workers)
    threads = _check_count("threads", threads)
    resamples = _check_count("resamples", resamples) or stats.RESAMPLES  # None: the default
    use_ray = ray not in (None, False)
    address = None if ray in (None, False, True) else str(ray)
    if isinstance(model, ModelAdapter):
        if use_ray or (workers or 1) > 1:
            raise UserError("a ready model adapter runs in this process only; give a model name to use workers or Ray")
        model_name = model.name
    else:
        model_name = clean_model(model)
    device = _device(device, use_ray)
    if isinstance(group_by, str):
        group_by = [g.strip() for g in group_by.split(",") if g.strip()]
    # With a class column the correct and the wrong photos are always apart (the headline is the correct).
    group_by = list(dict.fromkeys([*(["correct"] if class_column else []), *group_by]))
    listing = read_manifest(manifest, limit, reserved=RESERVED, option_columns=tuple(option_specs))
    if class_column is not None and class_column not in listing.extra_columns:
        raise UserError(
            f"the class column {class_column!r} is not in the manifest (its columns: "
            f"{', '.join(listing.extra_columns) or 'only image, prompt, contrast'})"
        )
    known = set(listing.extra_columns) | (set(CLASS_COLUMNS) if class_column else set())
    unknown = [g for g in group_by if g not in known]
    if unknown:
        raise UserError(
            f"cannot group by {', '.join(map(repr, unknown))}: not a manifest column"
            f"{'' if class_column else ' (correct needs a class column)'}"
        )

    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"the output folder {str(folder)!r} cannot be made: {error.strerror or error}") from None
    with folder_lock(folder):  # one run per folder at a time
        check_format(folder, ROWS)
        digest = check_config(folder, model_name, {**checked, **options})
        columns = [*BASE_COLUMNS, *(CLASS_COLUMNS if class_column else ()), *listing.extra_columns]
        notes = list(listing.notes)
        rows_path, sanity_path = folder / ROWS, folder / SANITY_ROWS
        with RowsFile(rows_path, columns) as rows_file, _sanity_file(sanity_path, sanity) as sanity_file:
            for path, repaired in (
                (rows_path, rows_file.repaired),
                (sanity_path, sanity_file and sanity_file.repaired),
            ):
                if repaired:
                    notes.append(
                        f"{path} ended in a partial line (an interrupted write); it was cut and its "
                        "image is computed again"
                    )
            done = latest(read_rows(rows_path)[1], digest)
            sanity_done = latest(read_rows(sanity_path)[1], digest, SANITY_KEY) if sanity else {}
            pending = _jobs(listing, names, substrates, done, retry_errors, sanity_done if sanity else None)
            jobs = pending if compute else []
            if threads is None:
                import torch

                threads = 1 if use_ray else max(1, torch.get_num_threads() // (workers or 1))
            config = WorkerConfig(
                model=model_name,
                device=device,
                params=checked,
                threads=threads,
                class_column=class_column,
                options=options,
            )
            info: dict[str, Any] = {}
            computed = _run(
                jobs,
                config,
                model,
                workers,
                use_ray,
                address,
                threads,
                info,
                (rows_file, sanity_file),
                digest,
                progress,
            )
        rows = {key: typed(row) for key, row in latest(read_rows(rows_path)[1], digest).items()}
        result = stats.summarize(rows, listing.items, names, checked["seed"], resamples, group_by, substrates)
        sanity_block = None
        if sanity or sanity_path.is_file():  # a --summary-only of a sanity run keeps its tables
            sanity_rows = {
                key: typed(row, SANITY_FLOAT_COLUMNS, SANITY_INT_COLUMNS)
                for key, row in latest(read_rows(sanity_path)[1], digest, SANITY_KEY).items()
            }
            sanity_block = stats.sanity_summary(sanity_rows, listing.items, names, checked["seed"], resamples)
        summary = Summary(
            n=result["n"],
            n_images=result["n_images"],
            n_failed=result["n_failed"],
            n_missing=result["n_missing"],
            methods=result["methods"],
            random=result["random"],
            pairs=result["pairs"],
            vs_random=result["vs_random"],
            groups=result["groups"],
            errors=result["errors"],
            ill_conditioned=result["ill_conditioned"],
            params={
                "model": model_name,
                "methods": names,
                **checked,
                **options,
                "manifest": str(Path(manifest)),
                "limit": limit,
                "class_column": class_column,
                "bootstrap_resamples": resamples,
                "confidence": stats.CONFIDENCE,
                "params_hash": digest,
            },
            run={
                "device": device,
                "workers": workers or (len(info.get("workers", [])) if use_ray else 1),
                "threads_per_worker": threads,
                "ray": info.get("ray"),
                "worker_details": info.get("workers", []),
                "images_computed": computed,
                "images_skipped": len(listing.items) - len(pending),
                "images_left": len(pending) - computed,
                "first_result_seconds": info.get("first_result_seconds"),
                "last_result_seconds": info.get("last_result_seconds"),
                "seconds": time.perf_counter() - started,
                "cpu_count": os.cpu_count(),
            },
            out=folder,
            notes=tuple(notes),
            substrates=result["substrates"],
            sanity=sanity_block,
        )
        _write_summary(summary, rows, listing, names)
    return summary


class _NoFile:
    """Where sanity rows would go when the run has no sanity check."""

    repaired = False

    def append(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            raise RuntimeError("sanity rows without evaluate(sanity=True)")

    def __enter__(self) -> _NoFile:
        return self

    def __exit__(self, *_: object) -> None:
        return None


def _sanity_file(path: Path, sanity: bool) -> RowsFile | _NoFile:
    return RowsFile(path, list(SANITY_COLUMNS)) if sanity else _NoFile()


def _jobs(
    listing: Manifest,
    methods: Sequence[str],
    substrates: Sequence[str],
    done: dict,
    retry_errors: bool,
    sanity_done: dict | None = None,
) -> list[Job]:
    """An image's job holds its (method, scoring substrate) rows that are missing (or failed, with
    retry_errors), the random reference's included, and with ``sanity_done`` (a sanity run) the
    methods whose sanity rows are missing."""

    def finished(row: dict | None) -> bool:
        return row is not None and not (retry_errors and row.get("error"))

    jobs = []
    for item in listing.items:
        wanted = tuple(
            (m, s) for m in (*methods, RANDOM) for s in substrates if not finished(done.get(item.key + (m, s)))
        )
        checks: tuple[str, ...] = ()
        if sanity_done is not None:
            have = {key[ITEM] for key, row in sanity_done.items() if key[:ITEM] == item.key and finished(row)}
            checks = tuple(m for m in methods if m not in have)
        if wanted or checks:
            jobs.append(Job(item, wanted, checks))
    return jobs


def _run(
    jobs: list[Job],
    config: WorkerConfig,
    model: str | ModelAdapter,
    workers: int | None,
    use_ray: bool,
    address: str | None,
    threads: int,
    info: dict[str, Any],
    files: tuple[RowsFile, RowsFile | _NoFile],
    digest: str,
    progress: bool | None,
) -> int:
    """Run the jobs on the chosen workers, appending each image's rows as it finishes."""
    if not jobs:
        return 0  # nothing to compute: no model is loaded
    from tqdm import tqdm

    from . import runners

    if use_ray:
        outcomes = runners.run_ray(jobs, config, address, workers, threads, info)
    elif workers is not None and workers > 1:
        outcomes = runners.run_processes(jobs, config, workers, info)
    else:
        outcomes = runners.run_here(jobs, config, model, info)
    computed, began = 0, time.perf_counter()
    with tqdm(
        total=len(jobs),
        unit="image",
        desc="evaluate",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    ) as bar:
        try:
            rows_file, sanity_file = files
            for job, rows in outcomes:
                rows_file.append(
                    [
                        {**job.item.extras, **row, "params_hash": digest}
                        for row in rows
                        if row.get("table") != SANITY_TABLE
                    ]
                )
                sanity_file.append([{**row, "params_hash": digest} for row in rows if row.get("table") == SANITY_TABLE])
                computed += 1
                # When results came: the rate between the first and the last is the workers' steady
                # throughput, without their start-up (loading the model, starting Ray).
                info.setdefault("first_result_seconds", time.perf_counter() - began)
                info["last_result_seconds"] = time.perf_counter() - began
                bar.set_postfix_str(job.item.image[-40:], refresh=False)
                bar.update()
        finally:
            outcomes.close()  # stops the workers, also on Ctrl-C
    return computed


def _write_summary(summary: Summary, rows: dict, listing: Manifest, methods: Sequence[str]) -> None:
    data = summary.to_dict()
    (summary.out / SUMMARY_JSON).write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    (summary.out / SUMMARY_MD).write_text(report.markdown(data, methods))
    first = summary.params["score_substrates"][0]
    complete = stats.complete(rows, listing.items, methods, first)
    srgs = {
        m: np.array([rows[item.key + (m, first)]["srg"] for item in complete], dtype=float) for m in (*methods, RANDOM)
    }
    report.plot(data, srgs, methods, summary.out / SUMMARY_PNG, seed=summary.params["seed"])


__all__ = ["Summary", "evaluate", "read_manifest", "read_rows"]
