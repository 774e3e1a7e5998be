"""A tiny random CLAP (model + tokenizer) built entirely offline.

It makes bundles, tests and smoke runs possible without the hub; its embeddings mean nothing
until a separator is trained against them. Given a corpus's captions it is the starting point
for fitting a query encoder from scratch (`querysep train-clap --init captions`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

_CORPUS = [
    "a dog barking",
    "dogs bark loudly",
    "a cat meowing",
    "a cow mooing",
    "a duck quacking",
    "a frog croaking",
    "a horse neighing",
    "an owl hooting",
    "a pig grunting",
    "a rooster crowing",
    "a sheep bleating",
    "a man speaking",
    "a woman talking",
    "people speaking",
    "traffic noise",
    "a car engine",
    "a siren wailing",
    "rain falling",
    "a bell ringing",
    "knocking on a door",
    "birds chirping",
    "a beep",
    "music playing",
    "a guitar strumming",
    "a piano playing",
    "drums",
    "wind blowing",
    "water running",
    "footsteps",
    "applause",
    "an alarm",
    "a telephone ringing",
    "a baby crying",
]


#: The text tower: the tests' (tiny, fast), and the one a caption vocabulary gets, wide enough
#: to keep its words apart.
TEXT_TOWER = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
CAPTION_TEXT_TOWER = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
)

#: Merges allowed when the vocabulary learns captions: more than any caption set needs, so
#: merging stops only when every word of them is a single token.
CAPTION_VOCAB_SIZE = 8192


def write_tiny_vocabulary(directory: str | Path, captions: Sequence[str] = ()) -> Path:
    """A byte-level BPE `vocab.json` + `merges.txt` pair, RoBERTa's special tokens first.

    Without captions it is 320 tokens, mostly single characters. With them, every word of the
    captions becomes one token: spelt out letter by letter, "a trombone playing" and "a
    saxophone playing" reached a 32-wide text tower as near-identical bags of letters, and a
    query encoder fitted from it could not tell them apart (cosine 1.00).
    """
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        (_CORPUS + sorted(set(captions))) * 4,
        vocab_size=CAPTION_VOCAB_SIZE if captions else 320,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    Path(directory).mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(directory))
    return Path(directory)


def build_tiny_clap(
    seed: int = 0, fused: bool = False, captions: Sequence[str] = ()
) -> tuple[Any, Any]:
    """The random tiny CLAP and its processor. `captions` give it a vocabulary of their words
    and a text tower wide enough to keep them apart (2 layers of 64 instead of 1 of 32)."""
    from transformers import (
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        RobertaTokenizer,
    )

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_vocabulary(tmp, captions)
        tokenizer = RobertaTokenizer(
            vocab=str(Path(tmp) / "vocab.json"),
            merges=str(Path(tmp) / "merges.txt"),
            model_max_length=77,
        )
    config = ClapConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            **(CAPTION_TEXT_TOWER if captions else TEXT_TOWER),
            max_position_embeddings=80,
        ),
        audio_config=dict(
            hidden_size=64,  # = patch_embeds_hidden_size * 2 ** (len(depths) - 1)
            patch_embeds_hidden_size=32,
            depths=[1, 1],
            num_attention_heads=[2, 2],
            window_size=8,
            spec_size=256,
            num_mel_bins=64,
            enable_fusion=fused,
        ),
        projection_dim=16,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = ClapModel(config).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer)
    return model, processor
