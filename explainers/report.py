"""The words of a result: score sentence, captions, verdicts, warnings, "How to read this".

Text only (Markdown), from a ``Result`` and the method registry, so that the app's page, its
tests and any other front end say the same thing. No gradio, no torch import of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .methods import METHODS
from .sanity import SANITY_NOTE
from .types import RANDOM_TITLE, MethodResult, RandomReference, Result, SaliencyMap, Target

# Below this probability of the prompt the page warns, before the curves, that the model is unsure.
UNSURE_PROBABILITY = 0.2
# A normalised curve this far outside 0..1 means partial pictures score above the whole photo
# (or below the blank one): the AUCs then compare with caution.
BAND_MARGIN = 0.25
# Above this normalised height the insertion curve's peak gets its own sentence: a part of the photo
# alone scores clearly higher than the whole (SMDL's "highest confidence" above the photo's).
PEAK_MARGIN = 0.02
# The sanity check's words: a map whose rank correlation with the original stays above this once the
# whole model is randomised "still looks like the original" (the map shows the photo, not the model).
SANITY_STILL_ALIKE = 0.5


def title(name: str) -> str:
    """What a method (or "random", the reference) is called on the page, in plots and tables."""
    return RANDOM_TITLE if name == "random" else METHODS[name].title if name in METHODS else name


def sentence(text: str) -> str:
    """One plain sentence: capitalised, single spaces, ending with a full stop."""
    text = " ".join(str(text).split())
    if not text:
        return "Something went wrong."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def prompt_probability(result: Result) -> float | None:
    """The probability the model gives the target, as the model declares it (``Result.probability``:
    a classifier's mass on the matched classes, CLIP's softmax against its vocabulary or among the
    prompts); None where it gives none."""
    probability = result.probability
    return None if probability is None or probability != probability else float(probability)


def score_markdown(result: Result, classes: Sequence[tuple[str, float]] | None = None) -> str:
    """The headline: the prompt's score in words, what it means for this model (the model's own
    words: ``Result.score_meaning``), the matched classes."""
    prompt = result.target.prompt
    probability = prompt_probability(result)
    meaning = result.score_meaning
    lines = []
    if result.target.kind != "prompt" and meaning is not None and probability is not None:
        lines.append(f"### Probability of {result.target.describe()}: {probability:.1%}")
        lines.append(sentence(f"the score is {meaning.words}"))
    elif result.target.contrast:
        others = ", ".join(f"“{c}”" for c in result.target.contrast)
        lines.append(f"### Probability of “{prompt}” rather than {others}: {result.score:.1%}")
        lines.append(
            "The model compares the prompts with each other; the bars show each one's share. "
            "The maps explain this probability: what tells the prompt apart from the others."
        )
    else:
        shown = f" (probability {probability:.1%})" if probability is not None else ""
        lines.append(f"### Score of “{prompt}”: {result.score:.3f}{shown}")
        if meaning is not None:
            lines.append(sentence(f"the score is {meaning.words}"))
    if classes:
        matched = ", ".join(f"{name} ({weight:.0%})" for name, weight in classes if weight >= 0.01)
        if matched:
            lines.append(f"Classes the prompt is matched to: {matched}.")
    lines.append(f"Model: `{result.model}` · {result.seconds:.1f} s in all · seed {result.params.get('seed')}.")
    for note in result.notes:
        lines.append(f"Note: {sentence(note)}")
    return "\n\n".join(lines)


def target_markdown(target: Target) -> str:
    """What a run explains, as soon as the model has resolved it (a VLM's answer, a detector's box),
    before the maps come."""
    return f"### Explaining {target.describe()}\n\nThe maps follow as each method finishes."


def offer_markdown(prompt: str, targets: Sequence[Target]) -> str:
    """What the model offers to explain for ``prompt`` (``app_runtime.offer_targets``), numbered as
    the picture numbers them, and how to pick one."""
    if len(targets) == 1 and not targets[0].pinned():
        return sentence(f"this model explains the prompt “{prompt}” itself: there is nothing to pick, press Run")
    lines = [f"**The model offers {len(targets)} target{'s' if len(targets) != 1 else ''} for “{prompt}”:**"]
    lines += [f"{number}. {target.choice_label()}" for number, target in enumerate(targets, start=1)]
    parts = [part for target in targets for part in target.parts()]
    if parts:
        lines.append("Or one part of it: " + "; ".join(part.choice_label() for part in parts) + ".")
    lines.append("Pick one under “What to explain” (the first is the default), then press Run.")
    return "\n\n".join(lines)


def verdict(result: Result, name: str) -> str:
    """One sentence: the method's SRG and whether it is more faithful than random order."""
    srg, best_random = result.methods[name].srg, max(result.random.srgs)
    if result.more_faithful_than_random(name):
        return (
            f"SRG {srg:.3f}: **more faithful than random order** "
            f"(the {result.random.orderings} random orderings reach at most {best_random:.3f})."
        )
    return (
        f"SRG {srg:.3f}: **not more faithful than random order** "
        f"(a random ordering reaches {best_random:.3f}); do not trust this map for this photo."
    )


def cost(name: str, saliency: SaliencyMap) -> str:
    """A map's cost line: its method, seconds and forward passes, and what its registry entry
    adds (``Method.facts``, e.g. IG's completeness error)."""
    passes = saliency.forward_passes
    facts = METHODS[name].facts if name in METHODS else None
    extra = facts(saliency) if facts is not None else ""
    return f"**{title(name)}** · {saliency.seconds:.1f} s · {passes} forward pass{'es' if passes != 1 else ''}" + (
        f" · {extra}" if extra else ""
    )


def pending_caption(name: str, saliency: SaliencyMap) -> str:
    """Under a map that has just arrived, before the curves: its cost, and that its verdict follows."""
    return f"{cost(name, saliency)}<br>The deletion and insertion curves, and the verdict, follow when every map is in."


def peak_sentence(result: Result, name: str) -> str:
    """Where the insertion curve climbs above the whole photo: "the best 20 % alone scores higher
    than the whole photo" (its height is not in the clipped AUC); empty otherwise."""
    insertion = result.methods[name].insertion
    peak = insertion.peak
    if not peak > 1.0 + PEAK_MARGIN:
        return ""
    return (
        f"The best {insertion.peak_fraction:.0%} of the pixels alone scores higher than the whole photo "
        f"(peak {peak:.2f}, the photo being 1); the AUCs count the curves up to 1."
    )


def caption(result: Result, name: str) -> str:
    """Under a method's map: cost, the verdict in words, both AUCs (and the insertion peak where
    it rises above the photo)."""
    r = result.methods[name]
    peak = peak_sentence(result, name)
    return (
        f"{cost(name, r.saliency)}<br>{verdict(result, name)}<br>"
        f"insertion AUC **{r.insertion.auc:.3f}** (higher is better) · "
        f"deletion AUC **{r.deletion.auc:.3f}** (lower is better)" + (f"<br>{peak}" if peak else "")
    )


def _leaves_band(values: Iterable[float]) -> bool:
    finite = [float(v) for v in values if v == v and abs(float(v)) != float("inf")]
    return bool(finite) and (min(finite) < -BAND_MARGIN or max(finite) > 1 + BAND_MARGIN)


def warnings(result: Result) -> list[str]:
    """Plain warnings to read before the curves: the model is unsure of the prompt; some curves
    leave the band from 0 to 1."""
    found = []
    probability = prompt_probability(result)
    # A logit's probability is taken against a fixed vocabulary, where other names of the same thing
    # share the mass (CLIP: "a cat" against "a photo of a tabby"): no sign that the model is unsure.
    against_vocabulary = result.score_meaning is not None and result.score_meaning.name == "logit"
    if probability is not None and probability < UNSURE_PROBABILITY and not against_vocabulary:
        what = (
            f"finds “{result.target.prompt}” less likely than the other prompts"
            if result.target.contrast and probability < 1 / len(result.target.prompts)
            else f"is unsure that this photo shows “{result.target.prompt}”"
        )
        found.append(
            f"The model {what} (probability {probability:.1%}, below {UNSURE_PROBABILITY:.0%}). "
            "The maps and curves then explain a weak score: read them with care, or ask about "
            "something the model recognises in the photo."
        )
    named: list[tuple[str, MethodResult | RandomReference]] = [*result.methods.items(), ("random", result.random)]
    wild = [title(n) for n, r in named if any(_leaves_band(c.normalized) for c in r.curves)]
    if wild:
        found.append(
            f"Some curves leave the band from 0 to 1 ({', '.join(wild)}): some partly covered "
            "pictures score higher than the whole photo, or lower than the blank one. This happens "
            "when the model is unsure about the photo. The AUCs and SRG count each curve only "
            "within the band (clipped), so what lies outside adds nothing; compare them with caution."
        )
    return found


def warnings_markdown(result: Result) -> str:
    return "\n\n".join(f"**Careful.** {w}" for w in warnings(result))


def run_verdicts(result: Result) -> str:
    """The verdicts of one run in a paragraph, for "How to read this"."""
    lines = [f"{title(n)}: {verdict(result, n)}" for n in result.methods]
    lines.append(f"Random order (mean of {result.random.orderings} orderings): SRG {result.random.srg:.3f}.")
    return "\n\n".join(lines)


MAPS_NOTE = (
    "**Colours.** Bright is important to the model, dark is not: the colour bar above the maps gives the "
    "scale. The default colour map (*inferno*) is perceptually uniform: equal steps in importance look like "
    "equal steps in colour, and it reads in black and white. *Jet* and *turbo* are there for comparison; "
    "their bright bands make some values look more important than they are.\n\n"
    "**Region search** paints each region by when the search chose it (the first one brightest); the first "
    "five are outlined and numbered.\n\n"
    "**Integrated gradients, smoothed** (Display) blurs the map a little (a Gaussian of 1.5 % of the picture's "
    "side) before the usual clipping at the 99th percentile (the brightest 1 % of pixels share the top colour), "
    "as most papers show it. Only the picture changes: the curves always use the map as computed."
)

CURVES_NOTE = (
    "**Deletion curve.** Take away the pixels the map calls most important first (paint them black, "
    "blur them, or fill them in from their neighbours) and watch the score. A faithful map makes the score "
    "fall fast, so the area under the curve (AUC) is small: *lower is better*.\n\n"
    "**Insertion curve.** Start from the blank picture and put back the most important pixels first. "
    "A faithful map makes the score rise fast: *higher is better*.\n\n"
    "**Random order** (grey, dashed) does the same with the pixels in a random order.\n\n"
    "On both plots 0 is the score of the blank picture and 1 the score of the whole photo. "
    "**The curve scrubber** shows the very pictures the model scored at each point of the curves: move it "
    "to see what “deleting the top 30 % by Grad-CAM” means. (It redraws them; it asks the model nothing.)"
)

SRG_NOTE = (
    "**The fair summary: SRG = insertion AUC − deletion AUC.** Deletion alone can mislead. Deleting pixels "
    "in a random order sprinkles black salt noise over the whole photo, and this model's score collapses "
    "once 30-40 % of the pixels are gone, although the object is still plain to see. A map that removes "
    "the most telling *part* first (the cat's eyes and face) leaves ears, nose and fur that still say "
    "“cat”, so random order often “wins” deletion against a good map. Insertion has the mirror problem. "
    "On one substrate the insertion curve is the deletion curve of the *least* important pixels first, so "
    "subtracting the two cancels the damage the substrate itself does, and a random order scores about 0. "
    "A map is **more faithful than random order** when its SRG is above the random reference's and above "
    "every one of the random orderings (so it is not luck). Both AUCs stay in the table.\n\n"
    "**Clipped to the band.** The AUCs count each curve only between 0 (the blank picture) and 1 (the whole "
    "photo): a few regions that alone score *higher* than the photo, or a deletion that leaves a picture "
    "scoring *below* the blank one, add nothing. Without this, a map can win by finding pictures the model "
    "likes better than the photo, which is not what it was asked. The table keeps the unclipped SRG and the "
    "insertion curve's peak beside it.\n\n"
    "**Judged on other substrates.** Region search and RISE choose their order by scoring the same kind of "
    "pictures the curves score (on the substrate the maps are made with), so on that substrate the curves "
    "partly grade them on their own objective. Under Advanced, *Curves: also scored on* draws every curve on "
    "other substrates too; a claim that one map is the most faithful should hold there."
)

STEPS_NOTE = (
    "**Region search, step by step.** The step-through replays the search. At step *k* the first *k* regions "
    "are chosen: the *kept* picture shows only them, the *removed* picture shows everything else. The search "
    "scores a set of regions by F = (score of the kept picture) + (1 − score of the removed picture), each "
    "between 0 (blank) and 1 (whole photo), and at every step adds the region with the largest gain in F. "
    "The default (two-ended) search builds the order from both ends at once: the most telling regions from the "
    "front and the least telling from the back, within a fifth of the passes the paper's search needs; where it "
    "ordered regions by its estimates without asking the model, their scores show as “not scored”. **Refine with plain greedy** re-runs only region search "
    "the way the paper does it (every remaining region tried at every step): slower, the reference result."
)


def how_to_read(methods: Iterable[str] | None = None, result: Result | None = None, extra: Sequence[str] = ()) -> str:
    """The classroom text: the methods' notes (from the registry), maps, curves, SRG, the region
    search's steps, the sanity check, ``extra`` sections, and, with a ``result``, the verdicts of
    that run."""
    names = list(result.methods) if result is not None else list(methods if methods is not None else METHODS)
    parts = [
        "#### The methods",
        *(METHODS[n].note for n in names if n in METHODS),
        "#### Reading the maps",
        MAPS_NOTE,
        "#### The curves",
        CURVES_NOTE,
        SRG_NOTE,
        "#### Region search",
        STEPS_NOTE,
        "#### The sanity check",
        SANITY_NOTE,
        *extra,
    ]
    if result is not None:
        parts += ["#### This run", run_verdicts(result)]
        parts += [f"**Careful.** {w}" for w in warnings(result)]
    return "\n\n".join(parts)


def _score(value: float | None) -> str:
    return "not scored" if value is None or value != value else f"{value:.2f}"


def scrub_markdown(result: Result, step: int) -> str:
    """What the scrubber shows at ``step`` of the curves: the fraction and each method's scores."""
    steps = int(result.params["curve_steps"])
    step = max(0, min(int(step), steps))
    fraction = step / steps
    lines = [
        f"**{fraction:.0%} of the pixels** (step {step} of {steps}) on the {result.substrates[0]} "
        "substrate. Scores: 0 = blank picture, 1 = whole photo."
    ]
    named: list[tuple[str, MethodResult | RandomReference]] = [*result.methods.items(), ("random", result.random)]
    for name, r in named:
        lines.append(
            f"- **{title(name)}**: top {fraction:.0%} deleted → {r.deletion.normalized[step]:.2f}; "
            f"top {fraction:.0%} revealed → {r.insertion.normalized[step]:.2f}"
        )
    return "\n".join(lines)


def step_markdown(result: Result, name: str, chosen: int) -> str:
    """What the step-through of map ``name`` (a method whose entry is ``stepped``: region search)
    shows after ``chosen`` regions: the last region's gain and the scores of the kept and removed
    parts."""
    if name not in result.methods:
        return f"{title(name)} was not part of this run: tick it under Methods."
    meta = result.methods[name].saliency.meta
    path = meta.get("path") or []
    n = len(path)
    chosen = max(0, min(int(chosen), n))
    search = meta.get("search_label") or meta.get("search", "")
    if chosen == 0:
        return (
            f"**Step 0 of {n}** ({search}): nothing chosen yet. The kept picture is blank (score 0), "
            "the removed picture is the whole photo (score 1). Move the slider to add regions in the "
            "order the search chose them."
        )
    entry = path[chosen - 1]
    gain = entry.get("gain")
    scored = entry.get("kept") is not None and entry.get("removed") is not None
    lines = [
        f"**Step {chosen} of {n}** ({search}): region {entry.get('region')} added"
        + (f", gain in F {gain:+.3f}" + ("" if scored else " (estimated)") if gain is not None else "")
        + ".",
        f"Kept part (the {chosen} region{'s' if chosen != 1 else ''} chosen so far): score "
        f"**{_score(entry.get('kept'))}**. Removed part (the rest): score **{_score(entry.get('removed'))}**.",
    ]
    if not scored:
        reference = METHODS[name].reference if name in METHODS else None
        lines.append(
            f"The {search} did not ask the model about both parts of this set: it placed this region "
            "by its estimates from earlier scores"
            + (f" (“Refine with {reference.label}” scores every step)." if reference is not None else ".")
        )
    return "\n\n".join(lines)


def sanity_markdown(result: Result) -> str:
    """The sanity check in words: what passing looks like, and per method how far its map moved
    from the original once the whole model was randomised. Empty when the run had none."""
    check = result.sanity
    if check is None:
        return ""
    lines = [SANITY_NOTE]
    for name, stages in check.methods.items():
        if not stages:
            continue
        first, last = stages[0], stages[-1]
        if last.blank:
            words = (
                "the map of the fully randomised model is blank (every value equal), so there is nothing to "
                "compare: a blank map is no pass"
            )
            at_end = "blank with the whole model randomised"
        else:
            words = (
                "it changes with the model"
                if abs(last.spearman) < SANITY_STILL_ALIKE
                else "it still looks much like the original: this map shows the photo more than what the model learnt"
            )
            at_end = f"{last.spearman:.2f} with the whole model randomised (SSIM {last.ssim:.2f})"
        at_first = "blank" if first.blank else f"{first.spearman:.2f}"
        references = check.references.get(name, {})
        known = (
            f" For scale, the original map's correlation with a centred blob is {references['centre']:.2f} and "
            f"with the photo's edges {references['edges']:.2f}."
            if {"centre", "edges"} <= set(references)
            else ""
        )
        lines.append(
            f"- **{title(name)}**: rank correlation with the original map {at_first} with "
            f"{first.stage} randomised, {at_end}: {words}.{known}"
        )
    return "\n".join(lines[:1]) + "\n\n" + "\n".join(lines[1:])


def colour_bar_html(stops: Sequence[str], low: str = "not important", high: str = "important to the model") -> str:
    """A horizontal colour bar (CSS gradient over ``stops``, hex colours) with its two ends named."""
    gradient = ", ".join(stops)
    return (
        f'<div class="colour-bar" role="img" aria-label="colour bar: {low} to {high}">'
        f'<span>{low}</span><div style="background: linear-gradient(to right, {gradient});"></div>'
        f"<span>{high}</span></div>"
    )


def done_status(result: Result) -> str:
    return f"Done: {result.seconds:.1f} s on `{result.model}`."


def sanity_running_status(result: Result) -> str:
    """The status once the curves are in while the sanity check still runs."""
    return f"Curves done in {result.seconds:.1f} s on `{result.model}`; the sanity check is running…"


def refined_status(result: Result, method: str, seconds: float) -> str:
    """The status after a method was re-run with its reference setting (``Method.reference``)."""
    reference = METHODS[method].reference
    how = f" with {reference.label}" if reference is not None else ""
    return f"Done: {title(method)[:1].lower() + title(method)[1:]} refined{how} in {seconds:.1f} s on `{result.model}`."
