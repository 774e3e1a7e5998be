from __future__ import annotations

import numpy as np
import pytest
import torch

from querysep.errors import QueryError
from querysep.query import AudioQuery, ClapQueryEncoder, Query, as_queries, parse_instruction
from querysep.query.parse import slug


@pytest.mark.parametrize(
    ("text", "mode", "body"),
    [
        ("dog barking", "extract", "dog barking"),
        ("Extract the dog barking.", "extract", "dog barking"),
        ("isolate a violin", "extract", "violin"),
        ("keep the speech", "extract", "speech"),
        ("get the birds chirping!", "extract", "birds chirping"),
        ("please give me the siren", "extract", "siren"),
        ("only the piano", "extract", "piano"),
        ("remove the traffic noise", "remove", "traffic noise"),
        ("Mute the dog", "remove", "dog"),
        ("suppress all the hum", "remove", "hum"),
        ("get rid of the wind noise", "remove", "wind noise"),
        ("everything except the vocals", "remove", "vocals"),
        ("everything but the drums", "remove", "drums"),
        ("keep everything except the cough", "remove", "cough"),
        ("  a   man   speaking  ", "extract", "a man speaking"),
        ("getting started music", "extract", "getting started music"),
    ],
)
def test_instruction_parsing(text: str, mode: str, body: str) -> None:
    got_mode, got_body, negative = parse_instruction(text)
    assert (got_mode, got_body, negative) == (mode, body, None)


def test_but_not_becomes_a_negative() -> None:
    assert parse_instruction("extract the dog but not the cat") == ("extract", "dog", "cat")
    q = Query.from_text("birds, but not the crows")
    assert q.positives == ("birds",) and q.negatives == ("crows",)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "\n\t", "remove the", "extract", "...!", "extract everything except",
     "remove all but not"],
)  # fmt: skip
def test_empty_queries_are_clear_errors(text: str) -> None:
    with pytest.raises(QueryError):
        Query.from_text(text)


def test_query_make_mixes_text_and_audio_with_weights() -> None:
    q = Query.make("dog barking", AudioQuery("dog.wav"), weights=(0.3, 0.7), negative="cat")
    assert q.positives == ("dog barking", AudioQuery("dog.wav"))
    assert q.weights == (0.3, 0.7)
    assert q.negatives == ("cat",)
    assert q.label == "dog barking + audio:dog.wav"
    with pytest.raises(QueryError):
        Query.make("dog", weights=(1.0, 2.0))
    with pytest.raises(QueryError):
        Query.make(["extract the dog", "remove the cat"])
    with pytest.raises(QueryError):
        Query(("dog",), weights=(0.0,))
    with pytest.raises(QueryError, match="weights must be numbers"):
        Query.make("dog", weights=("1",))
    with pytest.raises(QueryError, match="got int"):
        Query.make(3)
    alone = Query.make(AudioQuery("dog.wav"))  # an example passed positionally
    assert alone.positives == (AudioQuery("dog.wav"),) and alone.files[0].name == "dog.wav"


def test_as_queries_list_and_single() -> None:
    qs, as_list = as_queries(["dog", "remove the cat"])
    assert as_list and [q.mode for q in qs] == ["extract", "remove"]
    qs, as_list = as_queries("dog")
    assert not as_list and qs[0].positives == ("dog",)
    with pytest.raises(QueryError):
        as_queries([])
    with pytest.raises(QueryError):
        as_queries(42)


def test_slug() -> None:
    assert slug("Remove the traffic noise!") == "remove-the-traffic-noise"
    assert slug("???") == "query"


@pytest.fixture(scope="module")
def encoder() -> ClapQueryEncoder:
    return ClapQueryEncoder.tiny(seed=0)


def test_text_embeddings_normalised_and_cached(encoder: ClapQueryEncoder) -> None:
    emb = encoder.embed_text(["a dog barking", "traffic noise", "a dog barking"])
    assert emb.shape == (3, encoder.dim) == (3, 16)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(emb[0], emb[2])
    assert not torch.allclose(emb[0], emb[1])
    assert "a dog barking" in encoder._text_cache
    # a cached embedding is returned as is, not recomputed
    encoder._text_cache["a dog barking"] = torch.full((16,), 0.25)
    assert torch.equal(encoder.embed_text(["a dog barking"])[0], torch.full((16,), 0.25))
    encoder.clear_cache()


def test_text_cache_is_bounded_in_bytes(encoder: ClapQueryEncoder, monkeypatch) -> None:
    """A public server fed long, distinct texts keeps a bounded cache."""
    from querysep.query import clap

    long = "dog barking loudly " * 100  # longer than CLAP reads: embedded, not kept
    assert encoder.embed_text([long]).shape == (1, 16) and long not in encoder._text_cache
    monkeypatch.setattr(clap, "CACHE_BYTES", 2000)
    texts = [f"sound number {i} " * 8 for i in range(12)]
    encoder.embed_text(texts)
    assert 0 < len(encoder._text_cache) < 12 and encoder._cached_bytes <= 2000
    assert texts[-1] in encoder._text_cache and texts[0] not in encoder._text_cache  # LRU order
    encoder.clear_cache()
    assert encoder._cached_bytes == 0


def test_text_embedding_independent_of_batch(encoder: ClapQueryEncoder) -> None:
    alone = encoder._encode_text(["a cat meowing"])
    batched = encoder._encode_text(
        ["a cat meowing", "a much longer caption about rain falling on a roof"]
    )
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_overlong_text_warns_and_truncates(encoder: ClapQueryEncoder) -> None:
    long = " ".join(["dog"] * 300)
    with pytest.warns(UserWarning, match="CLAP reads only"):
        emb = encoder.embed_text([long])
    assert torch.isfinite(emb).all()


def test_audio_embeddings_any_rate_deterministic(encoder: ClapQueryEncoder) -> None:
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((2, 22050 * 3)).astype(np.float32) * 0.1
    a = encoder.embed_audio([clip], 22050)
    b = encoder.embed_audio([clip], 22050)
    assert a.shape == (1, 16) and torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_long_audio_query_uses_every_window(encoder: ClapQueryEncoder) -> None:
    sr = 16000
    rng = np.random.default_rng(1)
    first = rng.standard_normal(sr * 10).astype(np.float32) * 0.1
    second = np.sin(2 * np.pi * 440 * np.arange(sr * 10) / sr).astype(np.float32) * 0.3
    whole = encoder.embed_audio([np.concatenate([first, second])], sr)[0]
    parts = encoder.embed_audio([first, second], sr)
    expected = torch.nn.functional.normalize(parts.mean(0), dim=0)
    assert torch.allclose(whole, expected, atol=1e-4)


def test_silent_or_bad_audio_query_is_an_error(encoder: ClapQueryEncoder) -> None:
    with pytest.raises(QueryError):
        encoder.embed_audio([np.zeros(16000, np.float32)], 16000)
    with pytest.raises(QueryError):
        encoder.embed_part(AudioQuery(np.ones(100, np.float32)))  # no sample rate


def test_query_embedding_weights_and_negatives(encoder: ClapQueryEncoder) -> None:
    dog, cat = encoder.embed_text(["dog", "cat"])
    pos, neg = encoder.embed(Query(("dog", "cat"), weights=(3.0, 1.0), negatives=("rain",)))
    expected = torch.nn.functional.normalize(3 * dog + cat, dim=0)
    assert torch.allclose(pos, expected, atol=1e-5)
    assert neg is not None and torch.allclose(neg, encoder.embed_text(["rain"])[0], atol=1e-5)
    pos_only, none = encoder.embed(Query.from_text("remove the dog"))
    assert none is None and torch.allclose(pos_only, dog, atol=1e-6)


def test_hub_encoder_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from querysep.errors import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="Hugging Face Hub"):
        ClapQueryEncoder.from_pretrained("laion/clap-htsat-unfused-not-cached-here")


def test_fused_checkpoints_get_fusion_features() -> None:
    fused = ClapQueryEncoder.tiny(seed=0, fused=True)
    assert fused.fused
    rng = np.random.default_rng(3)
    long_clip = rng.standard_normal(48000 * 15).astype(np.float32) * 0.1  # > 10 s: fusion path
    a = fused.embed_audio([long_clip], 48000)
    b = fused.embed_audio([long_clip], 48000)
    assert a.shape == (1, 16) and torch.equal(a, b)  # fusion's random crops are seeded
    state = np.random.get_state()[1].copy()
    fused.embed_audio([long_clip], 48000)
    assert np.array_equal(np.random.get_state()[1], state)  # the caller's RNG is untouched
