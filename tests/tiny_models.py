"""Tiny, real, randomly initialised models for tests, built offline in seconds.

Every builder seeds torch before creating weights and builds its tokenizer from
fixed in-code data, so two processes that build into different directories get
identical models. The models are saved with `save_pretrained` and are loaded back
by the runners exactly like a downloaded model would be.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"
PAD = "<|pad|>"

# A small fixed corpus for the text tokenizer; its content only shapes the merges.
_TEXT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Return the number of items in the queue, or zero when it is empty.",
    "Open the file, read every line and close it again when done.",
    "The worker claims a slice of the job and writes one result per item.",
    "Images are generated from a prompt, a seed and a number of steps.",
    "Rain in the morning, sun in the afternoon, wind all night long.",
    "Seven small cats sat on seven warm mats and watched the birds.",
    "def add(a, b): return a + b",
    "for index, value in enumerate(values): print(index, value)",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 and 3.14159.",
    "Questions? Answers! Quotes \"like these\" and (brackets) [too] {all}.",
]

# Fixed words for the CLIP tokenizer of the tiny Stable Diffusion pipeline.
_CLIP_WORDS = [
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "painting",
    "cat", "dog", "red", "blue", "green", "house", "tree", "sky", "sunset",
    "mountain", "river", "city", "night", "portrait", "small", "big",
]

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"


def build_tiny_text_model(directory: Path | str) -> Path:
    """A 2-layer GPT-2 (width 64) with a byte-level BPE tokenizer, saved in `directory`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_text_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        initializer_range=0.1,  # larger than GPT-2's 0.02: peakier logits, fewer near-ties
        bos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _tiny_text_tokenizer():
    """A byte-level BPE trained on the fixed corpus: the demo recipe's own tokenizer
    builder, on a small vocabulary."""
    from worker.demo.text import train_tokenizer

    return train_tokenizer(_TEXT_CORPUS, vocab_size=400, max_length=128)


def build_tiny_unconditional_image_model(directory: Path | str) -> Path:
    """A 16x16 RGB `UNet2DModel` with a DDIM scheduler, saved as a `DDIMPipeline`."""
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(num_train_timesteps=1000, steps_offset=1)
    DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(directory)
    return directory


def build_tiny_text_to_image_model(directory: Path | str) -> Path:
    """A tiny Stable Diffusion pipeline (64x64 by default), saved in `directory`."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,  # latent pixels: 64 px through the VAE's scale factor of 8
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(directory)
    return directory


def _tiny_clip_tokenizer():
    """A CLIP BPE tokenizer whose vocabulary and merges are derived from `_CLIP_WORDS`.

    Training a BPE gives a different vocabulary in each process, so the merges are
    written out instead: each word is merged left to right, its last piece carrying
    the `</w>` end-of-word suffix. Every byte (with and without the suffix) is in the
    vocabulary, so any prompt tokenizes.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [char + "</w>" for char in alphabet]
    merges: list[tuple[str, str]] = []
    for word in _CLIP_WORDS:
        left = word[0]
        for position, char in enumerate(word[1:], start=1):
            right = char + ("</w>" if position == len(word) - 1 else "")
            merge = (left, right)
            left = left + right
            if merge not in merges:
                merges.append(merge)
                tokens.append(left)
    tokens += [CLIP_BOS, CLIP_EOS]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def tiny_registry_entries(text_dir: Path | str, uncond_dir: Path | str, t2i_dir: Path | str) -> dict[str, Any]:
    """Registry YAML content (as a dict) serving the three tiny models."""
    image_limits = {
        "num_inference_steps": {"max": 50},
        "width": {"min": 32, "max": 256},
        "height": {"min": 32, "max": 256},
    }
    return {
        "models": {
            "tiny-text": {
                "task": "text-generation",
                "source": str(Path(text_dir).resolve()),
                "dtype": "float32",
                "micro_batch_size": 8,
                "defaults": {"max_new_tokens": 16},
                "limits": {"max_new_tokens": {"max": 128}},
            },
            "tiny-uncond": {
                "task": "unconditional-image",
                "source": str(Path(uncond_dir).resolve()),
                "dtype": "float32",
                "micro_batch_size": 4,
                "defaults": {"num_inference_steps": 4},
                "limits": dict(image_limits),
            },
            "tiny-sd": {
                "task": "text-to-image",
                "source": str(Path(t2i_dir).resolve()),
                "dtype": "float32",
                "micro_batch_size": 4,
                "defaults": {"num_inference_steps": 4, "guidance_scale": 5.0, "width": 64, "height": 64},
                "limits": dict(image_limits),
            },
        }
    }
