"""Launch ``app.py`` as a subprocess on a free port of 127.0.0.1 (for the app and browser tests).

The server runs ``app.py`` through this file's ``__main__``, which first installs a forward-pass
counter: every image any model adapter scores (``prompt_scores``, which every score, gradient and
probability goes through) is appended to ``forward-passes.log`` in the server's work folder. The
tests read it (``forward_passes``) to prove that the page's replays (curve scrubber, step-through,
display settings) never reach the model. Nothing in app.py or the engine knows about it.
"""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT_S = 180
PASS_LOG = "forward-passes.log"
WORKDIRS: dict[str, Path] = {}  # base URL of each running server -> its work folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(workdir: Path):
    """Yield the base URL of a freshly started app; kill it (and show its log on failure) at the end."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio-tmp"),
        "GRADIO_EXAMPLES_CACHE": str(workdir / "examples-cache"),
        "SALIENCY_EXAMPLES_CACHE": "lazy",  # eager caching would cost ~1 min at startup
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "SALIENCY_LAB_TEST_PASS_LOG": str(workdir / PASS_LOG),
    }
    (workdir / PASS_LOG).write_text("")
    log_path = workdir / "app.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    WORKDIRS[url] = workdir
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"app.py did not answer within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def app_log(workdir: Path) -> str:
    path = workdir / "app.log"
    return path.read_text(errors="replace") if path.exists() else ""


def forward_passes(url: str) -> int:
    """Images scored by any model in the server at ``url`` so far."""
    path = WORKDIRS[url] / PASS_LOG
    return sum(int(line) for line in path.read_text().split()) if path.exists() else 0


def count_forward_passes(log_path: Path) -> None:
    """Wrap every model adapter's ``prompt_scores`` so that each call appends its image count to ``log_path``."""
    from explainers.models import base, classifier, clip  # noqa: F401 - every adapter class defined

    lock = threading.Lock()

    def counted(original):
        def prompt_scores(self, pixels, prompts):
            with lock, open(log_path, "a") as log:
                log.write(f"{int(pixels.shape[0])}\n")
            return original(self, pixels, prompts)

        return prompt_scores

    pending = list(base.ModelAdapter.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if "prompt_scores" in vars(cls):
            cls.prompt_scores = counted(vars(cls)["prompt_scores"])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    count_forward_passes(Path(os.environ["SALIENCY_LAB_TEST_PASS_LOG"]))
    sys.argv = [str(ROOT / "app.py")]
    runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
