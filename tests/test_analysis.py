"""nltutorial.analysis against plain loops over query pairs (GCNet's cosine distance)."""

import itertools

import pytest
import torch

from nltutorial import NonLocalBlock
from nltutorial.analysis import feature_vectors, mean_cosine_distance, query_map, upsample_map


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
