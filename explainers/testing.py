"""What the tests and the benchmarks build and start, in one place (nothing here downloads):

- ``tiny_clip`` and ``random_clip_b32``: CLIP models of real architecture with random weights,
  built from configs with the real CLIP tokenizer of the checkout's
  ``tests/fixtures/tinyclip-config`` (the ViT-B/32 one costs what openai/clip-vit-base-patch32
  costs; its maps mean nothing). Tiny builders of other model kinds belong beside them.
- ``AppServer``: a checkout's ``app.py`` on a free port of 127.0.0.1, optionally with a
  forward-pass counter (every image any model adapter scores is appended to a log the caller
  reads with ``forward_passes``: how the tests prove that the page's replays never reach the
  model). Nothing in app.py or the engine knows about the counter.

    python -m explainers.testing APP.py      # app.py with the counter (AppServer starts this)
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
from pathlib import Path
from types import TracebackType
from typing import Any

CHECKOUT = Path(__file__).resolve().parents[1]  # the repository, when the package runs from one
TINYCLIP_DIR = CHECKOUT / "tests" / "fixtures" / "tinyclip-config"  # a tiny CLIP config + the real tokenizer
PASS_LOG_ENV = "SALIENCY_LAB_TEST_PASS_LOG"


# --- random models of real architecture ------------------------------------------------------


def _fixture(folder: Path) -> Path:
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no tiny CLIP config at {folder}: it lives in a checkout's tests/fixtures/tinyclip-config "
            "(pass the folder of a saved CLIP config and tokenizer)"
        )
    return folder


def tiny_clip(seed: int = 0, folder: Path = TINYCLIP_DIR) -> Any:
    """The tiny CLIP of ``folder``'s config with random weights (seeded), as a ClipAdapter."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from .models.clip import ClipAdapter

    folder = _fixture(Path(folder))
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig.from_pretrained(folder))
    return ClipAdapter(model, AutoTokenizer.from_pretrained(folder), name="clip:tiny-random")


def random_clip_b32(seed: int = 0, folder: Path = TINYCLIP_DIR) -> Any:
    """A randomly initialised CLIP of the real ViT-B/32 shape (openai/clip-vit-base-patch32's cost,
    no download), with the real CLIP tokenizer of ``folder``, as a ClipAdapter."""
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from .models.clip import ClipAdapter

    folder = _fixture(Path(folder))
    config = CLIPConfig(
        text_config={
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_attention_heads": 8,
            "num_hidden_layers": 12,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_attention_heads": 12,
            "num_hidden_layers": 12,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=512,
    )
    torch.manual_seed(seed)
    return ClipAdapter(CLIPModel(config), AutoTokenizer.from_pretrained(folder), name="clip:random-vit-b32")


# --- the app on a free port ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """``app.py`` on 127.0.0.1:<free port>, offline, its output in ``workdir/app.log``.

    ``with AppServer(workdir) as server:`` starts it, waits until it answers and stops it at the
    end (``start``, ``wait_ready``, ``stop`` one by one). ``count_passes=True`` runs it through
    this module's counter (``forward_passes``); ``env`` adds or overrides environment variables.
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str] | None = None,
        count_passes: bool = False,
        app: Path = CHECKOUT / "app.py",
        startup_timeout_s: float = 240,
    ) -> None:
        self.workdir, self.app, self.count_passes = Path(workdir), Path(app), count_passes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.workdir / "app.log"
        self.pass_log = self.workdir / "forward-passes.log"
        self.startup_timeout_s = startup_timeout_s
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(self.workdir / "gradio-tmp"),
            "GRADIO_EXAMPLES_CACHE": str(self.workdir / "examples-cache"),
            "SALIENCY_EXAMPLES_CACHE": "lazy",  # eager caching would cost ~1 min at startup
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
            **({PASS_LOG_ENV: str(self.pass_log)} if self.count_passes else {}),
            **self.extra_env,
        }

    def start(self) -> AppServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.count_passes:
            self.pass_log.write_text("")
        command = [sys.executable, *(["-m", "explainers.testing"] if self.count_passes else []), str(self.app)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.app.parent, env=self.environment(), stdout=log, stderr=subprocess.STDOUT
            )
        return self

    def wait_ready(self) -> float:
        """Seconds until the page answers; RuntimeError (with the log's tail) if the app exits or is too slow."""
        assert self.process is not None, "start() first"
        started = time.monotonic()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=5) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() - started > self.startup_timeout_s:
                raise RuntimeError(f"app.py did not answer within {self.startup_timeout_s} s:\n{self.log()[-4000:]}")
            time.sleep(0.5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def forward_passes(self) -> int:
        """Images scored by any model in the server so far (``count_passes=True``)."""
        if not self.count_passes:
            raise RuntimeError("this server was started without the forward-pass counter")
        return sum(int(line) for line in self.pass_log.read_text().split()) if self.pass_log.exists() else 0

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def __enter__(self) -> AppServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def count_forward_passes(log_path: Path) -> None:
    """Wrap every model adapter's ``prompt_scores`` (which every score, gradient and probability goes
    through) so that each call appends its image count to ``log_path``."""
    from .models import MODEL_KINDS, base  # noqa: F401 - every adapter class defined

    lock = threading.Lock()

    def counted(original: Any) -> Any:
        def prompt_scores(self: Any, pixels: Any, prompts: Any) -> Any:
            with lock, open(log_path, "a") as log:
                log.write(f"{int(pixels.shape[0])}\n")
            return original(self, pixels, prompts)

        return prompt_scores

    pending = list(base.ModelAdapter.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if "prompt_scores" in vars(cls):
            cls.prompt_scores = counted(vars(cls)["prompt_scores"])  # type: ignore[method-assign]


if __name__ == "__main__":
    app = Path(sys.argv[1]).resolve()
    sys.path.insert(0, str(app.parent))
    count_forward_passes(Path(os.environ[PASS_LOG_ENV]))
    sys.argv = [str(app)]
    runpy.run_path(str(app), run_name="__main__")
