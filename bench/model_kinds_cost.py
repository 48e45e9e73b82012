"""What explaining a VLM's answer or a detector's box costs: per pass on this CPU, passes per
explanation, and FLOPs per pass of the real models' shapes.

    python bench/model_kinds_cost.py [--threads 1] [--skip-real]

1. The tiny random models of explainers/testing.py (every family the tests use): milliseconds
   per image scored (no gradients, a batch of max_batch) and per forward+backward image, FLOPs
   per pass (torch's FlopCounterMode), and the passes of one explanation at the CLI's protocol
   (50 curve steps, 3 random orderings, Grad-CAM + IG + region search + RISE at their defaults).
   Passes do not depend on the model's size (region search's count depends a little on its scores).
2. Randomly initialised models of the real shapes that fit in this machine's memory
   (SmolVLM-256M = Idefics3, OWLv2-base-patch16 at 960 px, Grounding-DINO-tiny at 800 x 800), one
   forward pass each through the adapter: FLOPs counted and seconds measured.
3. LLaVA-1.5-7B and Qwen2-VL-2B (too big to build here): FLOPs per pass from their configs'
   dimensions by formula, checked against the counted FLOPs of the shapes in 2.
Then the estimate per explanation: forward-equivalent passes (a backward pass counted as two
forward) x FLOPs per pass, in CPU hours at the rate measured in 2 and in GPU seconds at an assumed
sustained rate. Weights are random: the timings are real, the maps are not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from _common import ROOT, header, photo_path
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["SALIENCY_LAB_ALLOW_LOCAL_MODELS"] = "1"

GPU_TFLOPS = 50.0  # an assumed sustained fp32/TF32 rate of one datacenter GPU (the adapters run fp32)
QUESTION_TOKENS = 40  # a short question in a chat template, around the image tokens
ANSWER_TOKENS = 8


def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# torch's counter has no formula for the CPU kernel of scaled_dot_product_attention (it counts 0).
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention}


def flops(run) -> float:
    """FLOPs of ``run()``: matmuls, convolutions and attention (grid sampling is not counted)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        run()
    return float(counter.get_total_flops())


def per_image_ms(run, images: int, rounds: int = 2) -> float:
    run()  # warm-up: kernels for a new shape
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, (time.perf_counter() - started) / images * 1000)
    return best


@dataclass
class Passes:
    forward: int
    backward: int

    @property
    def equivalent(self) -> int:
        return self.forward + 2 * self.backward


PROTOCOLS = {  # (methods, curve steps)
    "CLI": (["gradcam", "ig", "region", "rise"], 50),
    "light": (["gradcam", "region"], 20),
}


def explanation_passes(model: str, prompt: str, extra: int, protocol: str = "CLI") -> Passes:
    """Every pass of one explanation, as the meters count them: the CLI's protocol (all four
    methods, 50 curve steps) or a light one (Grad-CAM and region search, the app's 20 steps)."""
    from explainers import explain

    methods, steps = PROTOCOLS[protocol]
    result = explain(photo_path("chelsea"), prompt, model=model, methods=methods, curve_steps=steps)
    forward = extra  # the target: a VLM's generation (a prefill and short decode steps), a detector's pass
    backward = 0
    for m in result.methods.values():
        forward += m.saliency.forward_passes + m.insertion.forward_passes + m.deletion.forward_passes
        backward += m.saliency.backward_passes
    forward += result.random.insertion.forward_passes + result.random.deletion.forward_passes
    return Passes(forward, backward)


def tiny_table(threads: int) -> dict[tuple[str, str], Passes]:
    from explainers.models import load_model
    from explainers.testing import TINY_DETECTORS, TINY_VLMS
    from explainers.types import Target

    header(f"Tiny random models ({threads} thread)")
    print(
        "| model | input | ms / image (no grad) | ms / image (fwd+bwd) | MFLOPs / pass | passes: CLI protocol "
        "| passes: light |"
    )
    print("|---|---|---|---|---|---|---|")
    passes: dict[tuple[str, str], Passes] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, builders in (("vlm", TINY_VLMS), ("detector", TINY_DETECTORS)):
            for name, build in builders.items():
                model = f"{kind}:{build(Path(tmp) / name)}"
                adapter = load_model(model)
                prompt = "what is in the image?" if kind == "vlm" else "a cat"
                pixels = adapter.load_image(__import__("PIL.Image").Image.open(photo_path("chelsea")))
                options = {p.name: p.default for p in adapter.target_params}
                target, _ = adapter.resolve_target(pixels, Target(prompt), options, (451, 300))
                batch = pixels.repeat(adapter.max_batch, 1, 1, 1)
                no_grad = per_image_ms(lambda b=batch, t=target: adapter.score_many(b, t), adapter.max_batch)
                grad_batch = pixels.repeat(adapter.max_grad_batch, 1, 1, 1)

                def backward(b=grad_batch, t=target) -> None:
                    x = b.clone().requires_grad_(True)
                    adapter.score(x, t).sum().backward()

                with_grad = per_image_ms(backward, adapter.max_grad_batch)
                with torch.no_grad():
                    counted = flops(lambda t=target: adapter.score(pixels, t))
                count = explanation_passes(model, prompt, extra=1)
                light = explanation_passes(model, prompt, extra=1, protocol="light")
                passes.setdefault((kind, "CLI"), count)
                passes.setdefault((kind, "light"), light)
                print(
                    f"| {model.split(':')[0]}:{name} | {adapter.input_size[0]} px | {no_grad:.1f} | {with_grad:.1f} | "
                    f"{counted / 1e6:.1f} | {count.forward} fwd + {count.backward} bwd | "
                    f"{light.forward} fwd + {light.backward} bwd |"
                )
    return passes


# --- the real shapes ------------------------------------------------------------------------


def layer_flops(tokens: int, hidden: int, mlp: int, heads: int, kv_heads: int, head_dim: int, gated: bool) -> float:
    """One transformer layer: q, k, v, o projections, attention scores and values, the MLP."""
    projections = 2 * tokens * hidden * head_dim * (2 * heads + 2 * kv_heads)
    attention = 4 * tokens * tokens * heads * head_dim
    feed_forward = 2 * tokens * hidden * mlp * (3 if gated else 2)
    return projections + attention + feed_forward


def smolvlm_formula() -> float:
    vision = 12 * layer_flops(1024, 768, 3072, 12, 12, 64, False) + 2 * 1024 * 768 * 3 * 16 * 16
    connector = 2 * 64 * (768 * 16) * 576
    text = 30 * layer_flops(64 + QUESTION_TOKENS + ANSWER_TOKENS, 576, 1536, 9, 3, 64, True)
    return vision + connector + text + 2 * (ANSWER_TOKENS + 1) * 576 * 49280


def llava_formula() -> float:
    vision = 24 * layer_flops(577, 1024, 4096, 16, 16, 64, False) + 2 * 577 * 1024 * 3 * 14 * 14
    projector = 2 * 576 * (1024 * 4096 + 4096 * 4096)
    text = 32 * layer_flops(576 + QUESTION_TOKENS + ANSWER_TOKENS, 4096, 11008, 32, 32, 128, True)
    return vision + projector + text + 2 * (ANSWER_TOKENS + 1) * 4096 * 32064


def qwen2_vl_formula(side: int = 448) -> float:
    patches = (side // 14) ** 2
    vision = 32 * layer_flops(patches, 1280, 5120, 16, 16, 80, False) + 2 * patches * 1280 * 3 * 2 * 14 * 14
    merger = 2 * (patches // 4) * (5120 * 5120 + 5120 * 1536)
    text = 28 * layer_flops(patches // 4 + QUESTION_TOKENS + ANSWER_TOKENS, 1536, 8960, 12, 2, 128, True)
    return vision + merger + text + 2 * (ANSWER_TOKENS + 1) * 1536 * 151936


def real_smolvlm():
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor

    from explainers.models.vlm import VlmAdapter
    from explainers.testing import IDEFICS3_TEMPLATE, tiny_tokenizer

    specials = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>"]
    tokenizer = tiny_tokenizer(
        [*specials, "<global-img>"],
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    processor = Idefics3Processor(
        image_processor=Idefics3ImageProcessor(
            size={"longest_edge": 512}, max_image_size={"longest_edge": 512}, do_image_splitting=False
        ),
        tokenizer=tokenizer,
        image_seq_len=64,
        chat_template=IDEFICS3_TEMPLATE,
    )
    config = Idefics3Config(
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 512,
            "patch_size": 16,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 576,
            "intermediate_size": 1536,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "vocab_size": 49280,
            "max_position_embeddings": 8192,
        },
        scale_factor=4,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return VlmAdapter(Idefics3ForConditionalGeneration(config), processor, name="vlm:SmolVLM-256M-shape")


def real_owlv2():
    from transformers import AutoTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    from explainers.models.detector import DetectorAdapter

    tokenizer = AutoTokenizer.from_pretrained(ROOT / "tests" / "fixtures" / "tinyclip-config")  # CLIP's 49408 tokens
    config = Owlv2Config(
        text_config={"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12, "num_attention_heads": 8},
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 960,
            "patch_size": 16,
        },
        projection_dim=512,
    )
    processor = Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 960, "width": 960}), tokenizer=tokenizer
    )
    return DetectorAdapter(Owlv2ForObjectDetection(config), processor, name="detector:OWLv2-base-shape")


def real_grounding_dino():
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
    )

    from explainers.models.detector import DetectorAdapter
    from explainers.testing import save_tiny_grounding_dino

    with tempfile.TemporaryDirectory() as tmp:  # its small BERT vocabulary (the text tower is cheap anyway)
        tokenizer = GroundingDinoProcessor.from_pretrained(save_tiny_grounding_dino(tmp)).tokenizer
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "embed_dim": 96,
            "depths": [2, 2, 6, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "image_size": 224,
            "out_features": ["stage2", "stage3", "stage4"],
        },
        text_config={"model_type": "bert", "vocab_size": len(tokenizer)},
    )
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 800, "longest_edge": 800})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return DetectorAdapter(
        GroundingDinoForObjectDetection(config), processor, name="detector:Grounding-DINO-tiny-shape"
    )


def real_table(passes: dict[tuple[str, str], Passes]) -> None:
    from PIL import Image

    header("Real shapes (random weights)")
    print(
        "| model | input | parameters | GFLOPs / pass | by formula | s / pass here | CPU h: CLI protocol "
        "| CPU min: light | GPU s: CLI protocol |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rate = None
    photo = Image.open(photo_path("chelsea"))
    rows = []
    for build, formula, prompt in (
        (real_smolvlm, smolvlm_formula, "what is in the image?"),
        (real_owlv2, None, "a cat"),
        (real_grounding_dino, None, "a cat"),
    ):
        adapter = build()
        parameters = sum(p.numel() for p in adapter.model.parameters())
        pixels = adapter.load_image(photo)
        if hasattr(adapter, "tokenizer"):
            ids = tuple(adapter.answer_ids("a cat on a mat sits there"))[:ANSWER_TOKENS]
            from explainers.models.vlm import AnswerTarget

            target = AnswerTarget(prompt, answer="a cat", token_ids=ids)
        else:
            from explainers.models.detector import BoxTarget

            target = BoxTarget(prompt, box=(10.0, 10.0, 200.0, 200.0), photo_size=photo.size)
        with torch.no_grad():
            started = time.perf_counter()
            counted = flops(lambda a=adapter, t=target, x=pixels: a.score(x, t))
            seconds = time.perf_counter() - started
        if rate is None:
            rate = counted / seconds
        rows.append((adapter.name.split(":")[1], adapter.input_size[0], parameters, counted, formula, seconds))
        del adapter
    for name, formula, parameters in (
        ("LLaVA-1.5-7B", llava_formula, 7.06e9),
        ("Qwen2-VL-2B (448 px)", qwen2_vl_formula, 2.21e9),
    ):
        rows.append((name, 336 if "LLaVA" in name else 448, parameters, formula(), formula, None))
    for name, side, parameters, counted, formula, seconds in rows:
        kind = "detector" if ("OWL" in name or "DINO" in name) else "vlm"
        full, light = passes[(kind, "CLI")].equivalent, passes[(kind, "light")].equivalent
        per_pass = seconds if seconds is not None else counted / rate
        if seconds is None:
            check = "(not built: formula only)"
        else:
            check = f"{formula() / 1e9:.0f} ({formula() / counted:.2f}x)" if formula else ""
        shown = f"{seconds:.1f}" if seconds is not None else f"~{per_pass:.0f} (est.)"
        print(
            f"| {name} | {side} px | {parameters / 1e6:.0f} M | {counted / 1e9:.0f} | {check} | {shown} | "
            f"{per_pass * full / 3600:.1f} | {per_pass * light / 60:.0f} | {counted * full / (GPU_TFLOPS * 1e12):.0f} |"
        )
    for (kind, protocol), count in sorted(passes.items()):
        methods, steps = PROTOCOLS[protocol]
        print(
            f"\n{kind}, {protocol} protocol ({', '.join(methods)}; {steps} curve steps): {count.forward} forward + "
            f"{count.backward} backward passes = {count.equivalent} forward-equivalents (counted on the tiny models)."
        )
    print(
        f"\nCPU rate measured on the first shape: {rate / 1e9:.0f} GFLOP/s with {torch.get_num_threads()} thread(s); "
        f"GPU at an assumed {GPU_TFLOPS:.0f} TFLOP/s sustained (fp32/TF32; the adapters run in fp32)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-real", action="store_true", help="only the tiny models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    passes = tiny_table(args.threads)
    if not args.skip_real:
        real_table(passes)


if __name__ == "__main__":
    main()
