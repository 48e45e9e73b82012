"""What the tests and the benchmarks build and start, in one place (nothing here downloads):

- ``tiny_clip`` and ``random_clip_b32``: CLIP models of real architecture with random weights,
  built from configs with the real CLIP tokenizer of the checkout's
  ``tests/fixtures/tinyclip-config`` (the ViT-B/32 one costs what openai/clip-vit-base-patch32
  costs; its maps mean nothing).
- ``save_tiny_*`` (``TINY_VLMS``: LLaVA, Qwen2-VL, Qwen2.5-VL, Idefics3; ``TINY_DETECTORS``:
  OWLv2, OWL-ViT, Grounding DINO): a randomly initialised model of each family from a config,
  with a processor (a small byte-level BPE tokenizer trained here with the ``tokenizers``
  library, or the real CLIP tokenizer for OWL), saved with ``save_pretrained`` into a folder that
  loads back the way a user's folder does (``vlm:FOLDER``, ``detector:FOLDER``, with
  SALIENCY_LAB_ALLOW_LOCAL_MODELS=1). Their maps mean nothing; their code paths are the real ones.
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


# --- tiny VLMs and detectors, saved to a folder ------------------------------------------

CORPUS = (
    "what is in the image? a cat sitting on a mat. a photo of a dog in the park. describe the picture. "
    "user assistant system: the answer is yes or no. how many people are there? two red cars, a blue sky."
)
# A chat template in the LLaVA-1.5 style ("USER: <image>\n... ASSISTANT:").
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: {% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}{% endfor %}\n"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ item['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% else %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


HEAD_STD = 0.1  # OWL's box and class heads, re-drawn at this scale (the boxes stay near their patches)


def tiny_tokenizer(special_tokens: list[str], vocab_size: int = 320, **names: Any) -> Any:
    """A byte-level BPE tokenizer (any text tokenizes) trained on a few English sentences, with
    ``special_tokens`` (ids 0, 1, ... in that order); ``names`` are the roles (eos_token=...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([CORPUS] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **names)


def _text_config(tokenizer: Any, **extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": len(tokenizer),
        "max_position_embeddings": 512,
        **extra,
    }


def save_tiny_llava(folder: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """A LLaVA-1.5-shaped model (CLIP-ViT tower, 2-layer MLP projector, Llama text model) with 4 x 4
    image tokens at 32 x 32 pixels."""
    import torch
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    folder = Path(folder)
    tokenizer = tiny_tokenizer(
        ["<pad>", "<s>", "</s>", "<image>"],
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config={
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        text_config={
            "model_type": "llama",
            **_text_config(tokenizer, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),  # type: ignore[call-arg]
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_qwen2_vl(folder: str | Path, seed: int = 0, side: int = 32, version: str = "2") -> Path:
    """A Qwen2-VL-shaped model (4-px patches, 2 x 2 merge, two-frame temporal patches, M-RoPE) whose
    processor sizes a photo to ``side`` x ``side`` pixels: (side / 8)^2 image tokens. ``version="2.5"``:
    Qwen2.5-VL (windowed attention over 2 x 2 merged tokens, so its tokens are reordered)."""
    import torch
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    prefix = "Qwen2VL" if version == "2" else "Qwen2_5_VL"
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForConditionalGeneration")
    processor_class = getattr(transformers, f"{prefix}Processor")

    folder = Path(folder)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
    specials += ["<|image_pad|>", "<|video_pad|>"]
    tokenizer = tiny_tokenizer(specials, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    sizes: dict[str, Any] = {"patch_size": 4, "merge_size": 2, "temporal_patch_size": 2}
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(**sizes, min_pixels=8 * 8, max_pixels=side * side),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**sizes),
        chat_template=QWEN_TEMPLATE,
    )
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    vision: dict[str, Any] = {"depth": 3, "num_heads": 2, "patch_size": 4, "spatial_merge_size": 2}
    vision["temporal_patch_size"] = 2
    if version == "2":
        vision.update(embed_dim=32, hidden_size=32, mlp_ratio=2)
    else:
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=32, window_size=16)
        vision.update(fullatt_block_indexes=[1])
    config = config_class(
        vision_config=vision,
        text_config=_text_config(
            tokenizer,
            bos_token_id=0,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_qwen2_5_vl(folder: str | Path, seed: int = 0, side: int = 32) -> Path:
    """A Qwen2.5-VL-shaped model: ``save_tiny_qwen2_vl(version="2.5")``."""
    return save_tiny_qwen2_vl(folder, seed, side, version="2.5")


def save_tiny_idefics3(folder: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """An Idefics3-shaped model (SmolVLM's architecture: SigLIP-style tower, pixel-shuffle connector
    with scale factor 2, Llama text model): 2 x 2 image tokens for one 32 x 32 global image."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
    )

    folder = Path(folder)
    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"]
    tokenizer = tiny_tokenizer(
        [*specials, "<global-img>"],
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size}, do_image_splitting=False
    )
    scale = 2
    tokens = (image_size // patch_size) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens, chat_template=IDEFICS3_TEMPLATE
    )
    config = Idefics3Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        text_config={
            "model_type": "llama",
            **_text_config(tokenizer, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        },
        scale_factor=scale,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    Idefics3ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_owlvit(folder: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8) -> Path:
    """An OWL-ViT-shaped detector (OWLv2 without the objectness head), like ``save_tiny_owlv2``."""
    return save_tiny_owlv2(folder, seed, image_size, patch_size, version=1)


def save_tiny_owlv2(
    folder: str | Path, seed: int = 0, image_size: int = 32, patch_size: int = 8, version: int = 2
) -> Path:
    """An OWLv2-shaped detector (CLIP towers, class/box/objectness heads): one box per patch,
    4 x 4 boxes at 32 x 32 pixels; the real CLIP tokenizer of tests/fixtures/tinyclip-config.
    ``version=1``: OWL-ViT."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    prefix = "Owlv2" if version == 2 else "OwlViT"
    config_class = getattr(transformers, f"{prefix}Config")
    model_class = getattr(transformers, f"{prefix}ForObjectDetection")
    image_processor_class = getattr(transformers, f"{prefix}ImageProcessor")
    processor_class = getattr(transformers, f"{prefix}Processor")

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(_fixture(TINYCLIP_DIR))
    config = config_class(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 16,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 3,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": patch_size,
        },
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    with torch.no_grad():  # the heads initialise at std 1, which saturates every box at this size
        for name, parameter in model.named_parameters():
            if "_head." in name and parameter.dim() > 1:
                parameter.normal_(0.0, HEAD_STD)
    model.save_pretrained(folder)
    size = {"height": image_size, "width": image_size}
    image_processor = (
        image_processor_class(size=size)
        if version == 2
        else image_processor_class(size=size, crop_size=size, do_center_crop=False)
    )
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


def save_tiny_grounding_dino(folder: str | Path, seed: int = 0, image_size: int = 128) -> Path:
    """A Grounding-DINO-shaped detector (Swin backbone, BERT text encoder, deformable encoder and
    decoder, 10 queries) at 128 x 128 pixels, with a small BERT WordPiece tokenizer."""
    import torch
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    folder = Path(folder)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?"]
    words += sorted(set(CORPUS.replace(".", " ").replace("?", " ").replace(":", " ").replace(",", " ").split()))
    words += list("abcdefghijklmnopqrstuvwxyz") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab = {word: i for i, word in enumerate(dict.fromkeys(words))}
    tokenizer = BertTokenizer(vocab=vocab)
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "embed_dim": 8,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1],
            "window_size": 2,
            "image_size": image_size,
            "out_features": ["stage2", "stage3", "stage4"],
        },
        text_config={
            "model_type": "bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": len(vocab),
            "max_position_embeddings": 64,
        },
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # the box heads are tied from the second decoder layer on
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=10,
        max_text_len=32,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


TINY_VLMS = {
    "llava": save_tiny_llava,
    "qwen2_vl": save_tiny_qwen2_vl,
    "qwen2_5_vl": save_tiny_qwen2_5_vl,
    "idefics3": save_tiny_idefics3,
}
TINY_DETECTORS = {"owlv2": save_tiny_owlv2, "owlvit": save_tiny_owlvit, "grounding_dino": save_tiny_grounding_dino}


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
