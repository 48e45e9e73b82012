"""What a method declares about itself, in its own file: the one source the API, the CLI, the
app and the benchmarks read (title, classroom note, paper, parameters, share of the progress bar,
how its map is drawn and described). Nothing outside a method's file and its entry switches on
its name: render.py draws from the map itself (``SaliencyMap.regions``, ``title``, ``colour``,
which ``run_method`` stamps from the entry), report.py and app.py read the entry.

A method's ``explain`` is ``explain(adapter, pixels, target, *, progress, substrate, seed,
**its parameters) -> SaliencyMap``: ``substrate`` and ``seed`` are the protocol's (what removed
pixels become, the run's seed), passed to every method; a method that has no use for them
ignores them. The method returns the map and its meta; ``run_method`` meters it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..params import Param
from ..types import SaliencyMap

DISPLAYS = ("heat", "regions")


@dataclass(frozen=True)
class Reference:
    """A slower setting of the method's own parameters that the page offers to re-run it with, as
    the paper's reference result (region search: plain greedy, SMDL's procedure)."""

    label: str  # what it is called: "plain greedy"
    params: dict[str, Any] = field(default_factory=dict)  # API parameters set for the re-run
    note: str = ""  # said on its button: "the paper's reference: slower"


@dataclass(frozen=True)
class Method:
    name: str  # the registry key, as users type it (CLI --methods, API methods=)
    title: str
    explain: Callable[..., SaliencyMap]
    paper: str
    note: str  # one paragraph for the classroom: what the method does, in plain words
    params: tuple[Param, ...] = ()
    progress_share: float = 0.1  # of one explain() call's progress bar, relative to the others
    colour: str = "#9467bd"  # its line on the curve plots
    black_box: bool = False  # True when it only asks the model for scores (no gradients)
    by_default: bool = True  # among the methods explain() runs when none are named
    # How its map is drawn and described:
    display: str = "heat"  # "heat": a heat map over the photo; "regions": each region in its rank's
    # colour, the first few outlined and numbered (its maps carry SaliencyMap.regions)
    smoothable: bool = False  # the page's Display may show it smoothed (blur + 99th-percentile clip)
    facts: Callable[[SaliencyMap], str] | None = None  # caption extras, e.g. IG's completeness error
    previews: bool = False  # it reports the map found so far as it runs (progress detail "preview")
    stepped: bool = False  # meta["path"] records its search step by step: the page's step-through
    reference: Reference | None = None  # a slower setting the page can re-run it with

    def __post_init__(self) -> None:
        if self.display not in DISPLAYS:
            raise ValueError(f"method {self.name!r}: display must be one of {DISPLAYS}, not {self.display!r}")

    def kwargs(self, params: dict) -> dict:
        """The method's own keyword arguments from the API's validated parameters."""
        return {p.keyword: params[p.name] for p in self.params}
