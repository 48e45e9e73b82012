"""Load and limits test for the app: N gradio_client users for T seconds against ``python app.py``.

    python bench/load_test.py                      # 20 users, 120 s (the issue's figures)
    python bench/load_test.py --users 4 --seconds 20

Loopback only: the script starts ``app.py`` itself on 127.0.0.1 with a free port and stops it at
the end. Everything is bounded: users (<= 64), seconds (<= 600), the drain after the deadline
(<= --drain seconds, then what is still queued is cancelled and counted as such).

Before the load, four probes of the limits (each prints PASS/FAIL):
- an upload over the app's maximum size is refused (HTTP 413);
- files outside the server's own folders are not served (/etc/passwd, app.py, a ../ escape);
- cancelling a running explanation frees the worker: the server's CPU falls idle within seconds;
- malformed API calls (bad parameter, empty prompt, broken image) get a one-sentence error.

During the load each user loops: pick a request (mostly valid, some invalid on purpose), submit it
through ``Client.submit(..., api_name="/explain")`` and wait. Outcomes:
    ok            a result came back
    refused       a one-sentence gr.Error (bad input) -- expected for the invalid requests
    queue full    Gradio refused to queue the request (the queue's max_size), cleanly
    server error  the app's generic "Something went wrong" (an unexpected exception inside)
    other         anything else: a dropped connection, a client timeout, ...
plus the count of tracebacks in the app's log. Printed: a table of outcomes by request kind,
p50/p95 latency (ok results; also all answered requests), the server's peak RSS, and a verdict.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from _common import ROOT  # also puts the checkout on sys.path

from explainers.testing import AppServer

ASSETS = ROOT / "assets"
MAX_USERS, MAX_SECONDS, MAX_DRAIN = 64, 600, 900
STARTUP_TIMEOUT_S = 240
GENERIC_ERROR = "Something went wrong"  # app.py's sentence for an unexpected exception
GRADIO_GENERIC = "has raised an exception but has not enabled verbose error reporting"  # Gradio's own


# ------------------------------------------------------------------------------------------
# The server


class Server(AppServer):
    """``python app.py`` on 127.0.0.1:<free port> (``explainers.testing.AppServer``: the tests'
    launcher), its log in ``workdir/app.log``, with its RSS and CPU sampled while it runs."""

    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(workdir, env=extra_env, startup_timeout_s=STARTUP_TIMEOUT_S)
        self.peak_rss = 0
        self.cpu_samples: list[tuple[float, float]] = []  # (time, CPU % of the server and children)
        self._stop = threading.Event()
        self.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _processes(self) -> list[psutil.Process]:
        try:
            parent = psutil.Process(self.process.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    def _sample(self) -> None:
        known: dict[int, psutil.Process] = {}
        while not self._stop.is_set():
            rss, cpu = 0, 0.0
            for p in self._processes():
                p = known.setdefault(p.pid, p)  # the same object, so cpu_percent measures since last call
                try:
                    rss += p.memory_info().rss
                    cpu += p.cpu_percent(None)
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.cpu_samples.append((time.monotonic(), cpu))
            self._stop.wait(0.25)

    def cpu_since(self, since: float) -> list[float]:
        return [c for t, c in self.cpu_samples if t >= since]

    def stop(self) -> None:
        self._stop.set()
        super().stop()


# ------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Kind:
    name: str
    weight: float
    image: str  # a key of the files made by make_files
    prompt: str
    params: dict
    expect: str  # "ok" or "refused"


def make_files(folder: Path) -> dict[str, Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = {"cat": ASSETS / "chelsea.jpg", "coffee": ASSETS / "coffee.jpg"}
    tiny = folder / "tiny.png"
    Image.new("RGB", (2, 2)).save(tiny)
    broken = folder / "broken.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 0, 0)).save(buffer, "PNG")
    broken.write_bytes(buffer.getvalue()[:60])
    files.update(tiny=tiny, broken=broken)
    return files


CHEAP = {"methods": ["gradcam"], "curve_steps": 10}
KINDS = [
    Kind("gradcam", 0.55, "cat", "a cat", CHEAP, "ok"),
    Kind("gradcam+contrast", 0.10, "coffee", "a cup of coffee", {**CHEAP, "contrast": "a teapot, a bowl"}, "ok"),
    Kind("all methods", 0.10, "cat", "a cat", {}, "ok"),
    Kind("empty prompt", 0.05, "cat", "   ", CHEAP, "refused"),
    Kind("tiny image", 0.05, "tiny", "a cat", CHEAP, "refused"),
    Kind("broken image", 0.05, "broken", "a cat", CHEAP, "refused"),
    Kind("bad parameter", 0.05, "cat", "a cat", {**CHEAP, "curve_steps": 100000}, "refused"),
    Kind("unknown model", 0.05, "cat", "a cat", {**CHEAP, "model": "resnet"}, "refused"),
]


def submit(client, files: dict[str, Path], kind: Kind):
    from gradio_client import handle_file

    return client.submit(handle_file(str(files[kind.image])), kind.prompt, api_name="/explain", **kind.params)


def classify(error: BaseException) -> tuple[str, str]:
    """An exception from ``job.result()`` -> (outcome, message)."""
    text = " ".join(str(error).split())
    if "queue is full" in text.lower():
        return "queue full", text
    if GENERIC_ERROR in text or GRADIO_GENERIC in text:
        return "server error", text
    if type(error).__name__ in ("AppError", "ValidationError"):  # a gr.Error / an invalid component value
        return "refused", text
    return "other", f"{type(error).__name__}: {text}"


@dataclass
class Record:
    kind: str
    expect: str
    outcome: str
    seconds: float
    message: str = ""


def user(
    index: int,
    url: str,
    files: dict[str, Path],
    deadline: float,
    hard_stop: float,
    records: list,
    lock: threading.Lock,
    seed: int,
) -> None:
    from gradio_client import Client

    rng = random.Random(seed * 1000 + index)
    try:
        client = Client(url, verbose=False)
    except Exception as error:  # noqa: BLE001 - counted, not raised
        with lock:
            records.append(Record("connect", "ok", "other", 0.0, f"{type(error).__name__}: {error}"))
        return
    while time.monotonic() < deadline:
        kind = rng.choices(KINDS, weights=[k.weight for k in KINDS])[0]
        started = time.monotonic()
        job = None
        try:
            job = submit(client, files, kind)
            job.result(timeout=max(1.0, hard_stop - time.monotonic()))
            outcome, message = "ok", ""
        except TimeoutError:
            outcome, message = "unfinished", "still queued or running at the end (cancelled)"
            if job is not None:
                job.cancel()
        except Exception as error:  # noqa: BLE001 - every outcome is counted
            if "timeout" in type(error).__name__.lower():
                outcome, message = "unfinished", "still queued or running at the end (cancelled)"
                if job is not None:
                    job.cancel()
            else:
                outcome, message = classify(error)
        with lock:
            records.append(Record(kind.name, kind.expect, outcome, time.monotonic() - started, message))
        if outcome == "queue full":
            time.sleep(1.0 + rng.random())  # a person would wait a moment before trying again
    try:
        client.close()
    except Exception:  # noqa: BLE001
        pass


# ------------------------------------------------------------------------------------------
# Probes of the limits


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def probe_upload_limit(server: Server, megabytes: int = 11) -> tuple[bool, str]:
    boundary = "----saliencylab"
    payload = os.urandom(megabytes * 1024 * 1024)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, text = http(
        server.url + "gradio_api/upload", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    return status == 413, f"{megabytes} MB upload -> HTTP {status} {text[:120]!r}"


def probe_files(server: Server) -> tuple[bool, str]:
    results = []
    ok = True
    for path in [
        "/etc/passwd",
        str(ROOT / "app.py"),
        str(ASSETS / ".." / "app.py"),
        str(ROOT / "requirements.txt"),
        "/proc/self/environ",
    ]:
        status, body = http(server.url + "gradio_api/file=" + urllib.request.quote(path))
        leaked = status == 200
        ok &= not leaked
        results.append(f"{path} -> {status}")
    status, _ = http(server.url + "gradio_api/file=" + urllib.request.quote(str(ASSETS / "chelsea.jpg")))
    results.append(f"assets/chelsea.jpg (allowed) -> {status}")
    return ok, "; ".join(results)


def probe_cancel(server: Server, files: dict[str, Path]) -> tuple[bool, str]:
    """Start a long run (all methods, plain greedy region search), cancel it after a few seconds, and
    check the server's CPU falls back to idle (the worker thread stopped) and a new run is served."""
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    warm = submit(client, files, KINDS[0])  # load the model first, so the long run is really running
    warm.result(timeout=300)
    long = client.submit(
        handle_file(str(files["cat"])),
        "a cat",
        api_name="/explain",
        region_search="greedy",
        n_regions=100,
        curve_steps=100,
    )
    time.sleep(6)
    running = statistics.mean(server.cpu_since(time.monotonic() - 3) or [0.0])
    long.cancel()
    cancelled_at = time.monotonic()
    idle_after = None
    while time.monotonic() - cancelled_at < 60:
        time.sleep(0.5)
        recent = [c for t, c in server.cpu_samples if t >= time.monotonic() - 1.0]
        if recent and max(recent) < 25:
            idle_after = time.monotonic() - cancelled_at
            break
    started = time.monotonic()
    submit(client, files, KINDS[0]).result(timeout=300)
    next_run = time.monotonic() - started
    client.close()
    ok = idle_after is not None and idle_after < 15
    return ok, (
        f"CPU while running {running:.0f}%; idle {idle_after:.1f} s after cancel"
        if idle_after is not None
        else f"CPU while running {running:.0f}%; still busy 60 s after cancel"
    ) + f"; next run served in {next_run:.1f} s"


def probe_errors(server: Server, files: dict[str, Path]) -> tuple[bool, str]:
    from gradio_client import Client

    client = Client(server.url, verbose=False)
    seen = []
    ok = True
    for kind in KINDS:
        if kind.expect != "refused":
            continue
        try:
            submit(client, files, kind).result(timeout=120)
            outcome, message = "ok", ""
        except Exception as error:  # noqa: BLE001
            outcome, message = classify(error)
        one_line = "\n" not in message and "Traceback" not in message and len(message) < 400
        ok &= outcome == "refused" and one_line
        seen.append(f"{kind.name}: {outcome} {message[:110]!r}")
    client.close()
    return ok, "\n      ".join(seen)


# ------------------------------------------------------------------------------------------


def log_tracebacks(log: str) -> tuple[int, int]:
    """(tracebacks Gradio logs for its own clean refusals -- a gr.Error from a component's input
    check, such as a slider value out of range --, every other traceback)."""
    blocks = log.split("Traceback (most recent call last)")[1:]
    refusals = 0
    for block in blocks:
        heads = [
            line
            for line in block.splitlines()[1:]
            if line
            and not line.startswith((" ", "\t", "^"))
            and ":" in line
            and not line.startswith(("The above", "During handling"))
        ]
        last = heads[0] if heads else ""  # the exception line right after the frames
        refusals += last.startswith("gradio.exceptions.Error:")
    # a chained traceback ("The above exception was the direct cause") is one error, counted once
    chained = log.count("The above exception was the direct cause") + log.count(
        "During handling of the above exception"
    )
    return refusals, max(0, len(blocks) - refusals - chained)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20, help=f"concurrent users (1..{MAX_USERS})")
    parser.add_argument("--seconds", type=float, default=120, help=f"how long users keep sending (1..{MAX_SECONDS})")
    parser.add_argument(
        "--drain", type=float, default=300, help=f"seconds to wait for answers after the deadline (0..{MAX_DRAIN})"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-probes", action="store_true", help="only the load")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for app.py (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    args = parser.parse_args(argv)
    if not (1 <= args.users <= MAX_USERS and 1 <= args.seconds <= MAX_SECONDS and 0 <= args.drain <= MAX_DRAIN):
        parser.error(f"--users 1..{MAX_USERS}, --seconds 1..{MAX_SECONDS}, --drain 0..{MAX_DRAIN}")

    workdir = Path(tempfile.mkdtemp(prefix="saliency-load-"))
    files = make_files(workdir / "inputs")
    extra_env = dict(item.split("=", 1) for item in args.env if "=" in item)
    server = Server(workdir, extra_env)
    figures: dict[str, Any] = {"users": args.users, "seconds": args.seconds, "cpus": os.cpu_count(), "env": extra_env}
    try:
        figures["startup_s"] = round(server.wait_ready(), 1)
        print(f"app.py ready at {server.url} in {figures['startup_s']} s (log: {server.log_path})")
        probes = {}
        if not args.skip_probes:
            for name, probe in [
                ("upload limit", lambda: probe_upload_limit(server)),
                ("no files outside temp", lambda: probe_files(server)),
                ("bad input -> one sentence", lambda: probe_errors(server, files)),
                ("cancel frees the worker", lambda: probe_cancel(server, files)),
            ]:
                try:
                    passed, detail = probe()
                except Exception as error:  # noqa: BLE001
                    passed, detail = False, f"{type(error).__name__}: {error}"
                probes[name] = passed
                print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}")
        figures["probes"] = probes

        load_before = os.getloadavg()[0]
        records: list[Record] = []
        lock = threading.Lock()
        start = time.monotonic()
        deadline = start + args.seconds
        hard_stop = deadline + args.drain
        threads = [
            threading.Thread(
                target=user, daemon=True, args=(i, server.url, files, deadline, hard_stop, records, lock, args.seed)
            )
            for i in range(args.users)
        ]
        print(f"load: {args.users} users for {args.seconds:.0f} s (then up to {args.drain:.0f} s to drain)...")
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(0.0, hard_stop + 60 - time.monotonic()))
        elapsed = time.monotonic() - start
        stuck = sum(t.is_alive() for t in threads)
        time.sleep(1.0)

        logged_refusals, tracebacks = log_tracebacks(server.log())
        alive = server.alive()
        by_kind: dict[str, Counter] = defaultdict(Counter)
        for r in records:
            by_kind[r.kind][r.outcome] += 1
        outcomes = ["ok", "refused", "queue full", "unfinished", "server error", "other"]
        print(f"\n{'request':18s} " + " ".join(f"{o:>12s}" for o in outcomes) + f" {'expected':>9s}")
        for kind in KINDS:
            counts = by_kind.get(kind.name, Counter())
            print(f"{kind.name:18s} " + " ".join(f"{counts[o]:12d}" for o in outcomes) + f" {kind.expect:>9s}")
        total = Counter(r.outcome for r in records)
        print(f"{'total':18s} " + " ".join(f"{total[o]:12d}" for o in outcomes))
        wrong = [r for r in records if r.outcome in ("ok", "refused") and r.outcome != r.expect]
        ok_latency = [r.seconds for r in records if r.outcome == "ok"]
        answered = [r.seconds for r in records if r.outcome in ("ok", "refused")]
        figures.update(
            {
                "requests": len(records),
                "outcomes": dict(total),
                "wrong_outcome": len(wrong),
                "elapsed_s": round(elapsed, 1),
                "throughput_ok_per_min": round(60 * total["ok"] / elapsed, 2),
                "p50_ok_s": round(percentile(ok_latency, 0.5), 2),
                "p95_ok_s": round(percentile(ok_latency, 0.95), 2),
                "p50_answered_s": round(percentile(answered, 0.5), 2),
                "p95_answered_s": round(percentile(answered, 0.95), 2),
                "peak_rss_mb": round(server.peak_rss / 2**20),
                "server_tracebacks": tracebacks,
                "logged_refusals": logged_refusals,
                "server_alive": alive,
                "stuck_users": stuck,
                "load_average_before": round(load_before, 1),
            }
        )
        print(
            f"\nrequests {len(records)} in {elapsed:.0f} s; ok/min {figures['throughput_ok_per_min']}; "
            f"latency ok p50 {figures['p50_ok_s']} s, p95 {figures['p95_ok_s']} s; "
            f"all answered p50 {figures['p50_answered_s']} s, p95 {figures['p95_answered_s']} s"
        )
        print(
            f"server peak RSS {figures['peak_rss_mb']} MB; unexpected tracebacks in its log {tracebacks} "
            f"(plus {logged_refusals} that Gradio logs for its own input checks, answered as a sentence); "
            f"alive {alive}; load average before the load {load_before:.1f} on {os.cpu_count()} CPUs"
        )
        for r in wrong[:5] + [r for r in records if r.outcome in ("server error", "other")][:5]:
            print(f"  {r.kind}: {r.outcome} {r.message[:200]!r}")
        verdict = (
            total["server error"] == 0
            and total["other"] == 0
            and tracebacks == 0
            and alive
            and not wrong
            and stuck == 0
            and all(probes.values())
        )
        figures["verdict"] = "PASS" if verdict else "FAIL"
        print(
            f"verdict: {figures['verdict']} (0 server errors, 0 other failures, 0 tracebacks, every "
            "request answered or cleanly queued/refused, probes passed)"
        )
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
        return 0 if verdict else 1
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True) if not os.environ.get("KEEP_LOAD_WORKDIR") else None


if __name__ == "__main__":
    sys.exit(main())
