from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from querysep.apply import ChunkPlan, overlap_add
from querysep.errors import ConfigError
from querysep.models import build_model
from querysep.models.bands import band_bins, band_weights, bsrnn_edges
from querysep.models.bandsplit import BandSplitSeparator

from .conftest import CONFIGS

SPECS = [
    {"scale": "mel", "num_bands": 48},
    {"scale": "erb", "num_bands": 24},
    {"scale": "mel", "num_bands": 200},  # more bands than low-frequency bins at small n_fft
    {"scale": "edges", "edges_hz": bsrnn_edges()},
]


@pytest.mark.parametrize("rate", [16000, 32000, 44100, 48000])
@pytest.mark.parametrize("n_fft", [512, 1024, 2048])
@pytest.mark.parametrize("spec", SPECS)
def test_band_weights_partition_unity(rate: int, n_fft: int, spec: dict) -> None:
    w = band_weights(rate, n_fft, spec)
    assert w.shape[1] == n_fft // 2 + 1
    assert torch.all(w >= 0)
    torch.testing.assert_close(w.sum(0), torch.ones(n_fft // 2 + 1))
    assert all(len(b) > 0 for b in band_bins(w))
    if spec["scale"] != "edges":
        assert max(int((row > 0).sum(0) > 1) for row in w.T) == 1  # bands really overlap


def test_edges_above_nyquist_are_dropped() -> None:
    assert band_weights(16000, 1024, {"scale": "edges", "edges_hz": bsrnn_edges()}).shape[0] == 27
    assert band_weights(48000, 2048, {"scale": "edges", "edges_hz": bsrnn_edges()}).shape[0] == 35
    with pytest.raises(ConfigError):
        band_weights(16000, 512, {"scale": "bark"})


def tiny(**overrides) -> BandSplitSeparator:
    cfg = {"sample_rate": 16000, "query_dim": 8, "n_fft": 512, "hop_length": 128, "dim": 16,
           "depth": 2, "heads": 2, "dim_head": 8, "ff_mult": 2, "mask_mult": 2,
           "bands": {"scale": "mel", "num_bands": 12}}  # fmt: skip
    torch.manual_seed(0)
    return BandSplitSeparator({**cfg, **overrides})


def queries(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)


def perturb_film(model: torch.nn.Module, scale: float = 0.3) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("films"):
                p.add_(scale * torch.randn(p.shape, generator=g))


def identity_mask(model: BandSplitSeparator) -> None:
    """Make every band's GLU emit 1 + 0j: the mask head then passes the mixture through."""
    with torch.no_grad():
        for mlp in model.mask.mlps:
            last = mlp[2]
            last.weight.zero_()
            half = last.out_features // 2
            last.bias.zero_()
            last.bias[0:half:2] = 1.0  # real parts of the GLU's value half
            last.bias[half:] = 30.0  # gate fully open


@pytest.mark.parametrize("length", [1, 100, 511, 16000, 16001])
def test_shapes_and_odd_lengths(length: int) -> None:
    model = tiny()
    out = model(torch.randn(3, length), queries(3))
    assert out.shape == (3, length) and torch.isfinite(out).all()


def test_identity_mask_reconstructs_across_chunk_boundaries() -> None:
    model = tiny().eval()
    identity_mask(model)
    x = torch.randn(2, 16000 * 3 + 123) * 0.1
    q = queries(1)

    def fn(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model.separate_many(rows, q)

    y = overlap_add(fn, x, ChunkPlan(16000, 4000, batch_size=2), 1)[0]
    err = 10 * torch.log10(((y - x) ** 2).sum() / (x**2).sum())
    assert err < -60, float(err)


def test_silence_gives_exact_zeros() -> None:
    model = tiny()
    perturb_film(model)
    assert torch.equal(model(torch.zeros(2, 4000), queries(2)), torch.zeros(2, 4000))


def test_film_is_identity_at_init_and_conditions_after_training() -> None:
    model = tiny().eval()
    x = torch.randn(1, 8000)
    a, b = queries(2)
    with torch.no_grad():
        assert torch.equal(model(x, a[None]), model(x, b[None]))
        perturb_film(model)
        assert not torch.allclose(model(x, a[None]), model(x, b[None]), atol=1e-5)
        neg = queries(1, seed=5)
        assert not torch.allclose(model(x, a[None]), model(x, a[None], neg), atol=1e-5)
        # zeros mean "no negative"
        assert torch.equal(model(x, a[None]), model(x, a[None], torch.zeros(1, 8)))


def test_without_negative_conditioning() -> None:
    model = tiny(negative=False)
    assert not model.accepts_negative
    assert model.films[0].proj.in_features == 8


@pytest.mark.parametrize("conditioning", ["every_block", "once"])
def test_separate_many_equals_per_query_forward(conditioning: str) -> None:
    model = tiny(conditioning=conditioning, depth=3).eval()
    perturb_film(model)
    x, q, neg = torch.randn(2, 6000), queries(3), queries(3, seed=9)
    with torch.no_grad():
        many = model.separate_many(x, q, neg)
        for k in range(3):
            single = model(x, q[k].expand(2, -1), neg[k].expand(2, -1))
            torch.testing.assert_close(many[:, k], single, atol=1e-5, rtol=1e-4)


def test_once_shares_the_encoder() -> None:
    model = tiny(conditioning="once", depth=4, encoder_depth=3).eval()
    calls = []
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    with torch.no_grad():
        model.separate_many(torch.randn(2, 4000), queries(5))
    assert calls == [2, 2, 2, 10]  # three encoder blocks on 2 mixtures, the last on 2 x 5


@pytest.mark.parametrize("conditioning", ["every_block", "once"])
def test_gradients_reach_every_parameter(conditioning: str) -> None:
    model = tiny(conditioning=conditioning)
    out = model(torch.randn(2, 4000), queries(2), queries(2, seed=1))
    out.square().mean().backward()
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_bf16_autocast() -> None:
    model = tiny().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 4000), queries(2))
    assert out.dtype == torch.float32 and out.shape == (2, 4000) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "query_dim", "low", "high"),
    [
        ("bandsplit-tiny", 16, 0.05e6, 1e6),
        ("bandsplit-small", 512, 8e6, 12e6),
        ("bandsplit-base", 512, 30e6, 40e6),
    ],
)
def test_config_sizes(name: str, query_dim: int, low: float, high: float) -> None:
    cfg = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    model = build_model(
        cfg["family"], {**cfg["model"], "sample_rate": cfg["sample_rate"], "query_dim": query_dim}
    )
    assert low <= model.num_parameters() <= high


@pytest.mark.parametrize(
    "bad",
    [{"dim": 0}, {"hop_length": 4096}, {"dim_head": 7}, {"conditioning": "sometimes"},
     {"encoder_depth": 9}, {"bands": "mel"}, {"no_such_key": 1}, {"sample_rate": "fast"}],
)  # fmt: skip
def test_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        tiny(**bad)


def test_state_dict_round_trip_is_exact() -> None:
    a, b = tiny(), tiny(dim=16)
    perturb_film(a)
    b.load_state_dict(a.state_dict())
    x, q = torch.randn(1, 3000), queries(1)
    with torch.no_grad():
        assert np.array_equal(a(x, q).numpy(), b(x, q).numpy())
