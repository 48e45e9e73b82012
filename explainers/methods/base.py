"""What a method declares about itself, in its own file: the one source the API, the CLI, the
app and the benchmarks read (title, classroom note, paper, parameters, share of the progress bar).

A method's ``explain`` is ``explain(adapter, pixels, target, *, progress, substrate, seed,
**its parameters) -> SaliencyMap``: ``substrate`` and ``seed`` are the protocol's (what removed
pixels become, the run's seed), passed to every method; a method that has no use for them
ignores them. The method returns the map and its meta; ``run_method`` meters it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..params import Param
from ..types import SaliencyMap


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

    def kwargs(self, params: dict) -> dict:
        """The method's own keyword arguments from the API's validated parameters."""
        return {p.keyword: params[p.name] for p in self.params}
