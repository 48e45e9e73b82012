"""Tiny random models of real architectures, for tests and benchmarks (no download).

Each ``save_tiny_*`` builds a randomly initialised model from a config, with a processor (a
small tokenizer trained here with the ``tokenizers`` library, or the real CLIP tokenizer of
tests/fixtures/tinyclip-config), and saves both with ``save_pretrained`` into a folder that
loads back the way a user's folder does (``vlm:FOLDER``, ``detector:FOLDER``, with
SALIENCY_LAB_ALLOW_LOCAL_MODELS=1). Their maps mean nothing; their code paths are the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TINYCLIP = ROOT / "tests" / "fixtures" / "tinyclip-config"

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
    tokenizer = AutoTokenizer.from_pretrained(TINYCLIP)
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
