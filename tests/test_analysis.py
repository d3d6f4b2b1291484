"""nltutorial.analysis against plain loops over query pairs (GCNet's cosine distance)."""

import itertools
import math

import pytest
import torch

from nltutorial import NonLocalBlock
from nltutorial.analysis import (feature_vectors, gcnet_avg_dist, map_entropy, mean_cosine_distance,
                                 query_map, upsample_map)


def plain_mean_cosine_distance(v):
    """(N, D) → 1/(N(N-1)) Σ_{i≠j} (1 - cos(v_i, v_j)), one pair at a time."""
    n = v.shape[0]
    total = 0.0
    for i, j in itertools.permutations(range(n), 2):
        a, b = v[i].double(), v[j].double()
        denom = a.norm() * b.norm()
        cos = (a @ b / denom).item() if denom > 0 else 0.0
        total += 1.0 - cos
    return total / (n * (n - 1))


def plain_cosine(a, b):
    """cos(a, b), taken as 0 when either vector is zero."""
    a, b = [float(t) for t in a], [float(t) for t in b]
    na, nb = math.sqrt(sum(t * t for t in a)), math.sqrt(sum(t * t for t in b))
    return sum(x * y for x, y in zip(a, b)) / (na * nb) if na > 0 and nb > 0 else 0.0


def plain_gcnet_avg_dist(v):
    """(N, D) → 1/N² Σ_i Σ_j (1 - cos(v_i, v_j)) / 2 over all ordered pairs, i = j included."""
    n = v.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += (1.0 - plain_cosine(v[i], v[j])) / 2
    return total / (n * n)


def plain_entropy(row):
    """-Σ_j a_j log a_j with 0 log 0 = 0."""
    return -sum(float(a) * math.log(float(a)) for a in row if a > 0)


@pytest.mark.parametrize("shape", [(2, 2, 3), (3, 7, 5), (1, 12, 1)])
def test_gcnet_avg_dist_matches_double_loop(shape):
    torch.manual_seed(2)
    v = torch.randn(*shape)
    got = gcnet_avg_dist(v)
    assert got.shape == (shape[0],) and got.dtype == torch.float64
    for b in range(shape[0]):
        assert got[b].item() == pytest.approx(plain_gcnet_avg_dist(v[b]), abs=1e-10)
        # the two conventions: all N² pairs and halved, against N(N-1) pairs
        n = shape[1]
        book = plain_mean_cosine_distance(v[b])
        assert got[b].item() == pytest.approx((n - 1) / (2 * n) * book, abs=1e-10)


def test_gcnet_avg_dist_known_values():
    same = torch.tensor([[[0.2, 0.3, 0.5]] * 5])
    assert gcnet_avg_dist(same).item() == pytest.approx(0.0, abs=1e-12)
    onehot = torch.eye(4)[None]  # 12 pairs at cosine 0 (distance 1/2), 4 self-pairs at 0
    assert gcnet_avg_dist(onehot).item() == pytest.approx(12 * 0.5 / 16)
    opposite = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])  # cos -1: distance 1 for 2 of 4 pairs
    assert gcnet_avg_dist(opposite).item() == pytest.approx(0.5)
    with_zero = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    assert gcnet_avg_dist(with_zero).item() == pytest.approx(plain_gcnet_avg_dist(with_zero[0]), abs=1e-12)
    assert gcnet_avg_dist(with_zero).item() == pytest.approx(5 * 0.5 / 9)  # 4 pairs + the zero's self-pair
    with pytest.raises(ValueError, match=r"vectors must be a \(B, N, D\) tensor"):
        gcnet_avg_dist(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        gcnet_avg_dist(torch.zeros(2, 1, 4))


def test_map_entropy_matches_plain_sum():
    torch.manual_seed(3)
    maps = torch.softmax(3 * torch.randn(2, 5, 7), dim=-1)
    maps[0, 1] = torch.tensor([1.0, 0, 0, 0, 0, 0, 0])  # one-hot row: H = 0
    maps[1, 2] = torch.full((7,), 1 / 7)  # uniform row: H = log 7
    got = map_entropy(maps)
    assert got.shape == (2, 5) and got.dtype == torch.float64
    for b in range(2):
        for i in range(5):
            assert got[b, i].item() == pytest.approx(plain_entropy(maps[b, i]), abs=1e-9)
    assert got[0, 1].item() == 0.0
    assert got[1, 2].exp().item() == pytest.approx(7.0)  # the effective number of keys
    with pytest.raises(ValueError, match="non-negative"):
        map_entropy(torch.tensor([[0.5, -0.1, 0.6]]))
    with pytest.raises(ValueError, match=r"attention must be a \(\.\.\., N_s\) tensor"):
        map_entropy(torch.tensor(0.5))


@pytest.mark.parametrize("shape", [(2, 2, 3), (3, 7, 5), (1, 12, 1)])
def test_matches_pairwise_loop(shape):
    torch.manual_seed(0)
    v = torch.randn(*shape)
    got = mean_cosine_distance(v)
    assert got.shape == (shape[0],) and got.dtype == torch.float64
    for b in range(shape[0]):
        assert got[b].item() == pytest.approx(plain_mean_cosine_distance(v[b]), abs=1e-10)


def test_known_values():
    same = torch.tensor([[[0.2, 0.3, 0.5]] * 4])  # every query has the same map
    assert mean_cosine_distance(same).item() == pytest.approx(0.0, abs=1e-12)
    onehot = torch.eye(4)[None]  # disjoint maps: cosine 0 for every pair
    assert mean_cosine_distance(onehot).item() == pytest.approx(1.0, abs=1e-12)
    # scale does not matter, and a zero vector has cosine 0 with everything
    v = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 0.0]]])
    assert mean_cosine_distance(v).item() == pytest.approx(plain_mean_cosine_distance(v[0]), abs=1e-12)
    assert mean_cosine_distance(v).item() == pytest.approx(4 / 6)


def test_nonlocal_block_maps():
    torch.manual_seed(1)
    block = NonLocalBlock(8, mode="embedded", sub_sample=True).eval()
    x = torch.randn(2, 8, 6, 6)
    _, attn = block(x, return_attention=True)  # (2, 36, 9)
    d = mean_cosine_distance(attn)
    for b in range(2):
        assert d[b].item() == pytest.approx(plain_mean_cosine_distance(attn[b]), abs=1e-9)
    assert ((d > 0) & (d < 1)).all()
    feats = feature_vectors(x)
    assert feats.shape == (2, 36, 8)
    assert torch.equal(feats[1, 6 * 2 + 3], x[1, :, 2, 3])
    m = query_map(attn, (2, 3), (6, 6), (3, 3))
    assert m.shape == (2, 3, 3)
    assert torch.equal(m.flatten(1), attn[:, 15])
    assert torch.allclose(m.sum(dim=(1, 2)), torch.ones(2), atol=1e-6)
    up = upsample_map(m, (6, 6))
    assert up.shape == (2, 6, 6) and torch.equal(up[:, ::2, ::2], m)


def test_bad_input_names_argument():
    with pytest.raises(ValueError, match=r"vectors must be a \(B, N, D\) tensor"):
        mean_cosine_distance(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="N >= 2"):
        mean_cosine_distance(torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match=r"x must be a \(B, C, \*spatial\)"):
        feature_vectors(torch.zeros(4, 4))
    attn = torch.full((1, 4, 4), 0.25)
    with pytest.raises(ValueError, match="does not match query_shape"):
        query_map(attn, (0, 0), (3, 3), (2, 2))
    with pytest.raises(ValueError, match="outside the query grid"):
        query_map(attn, (2, 0), (2, 2), (2, 2))
