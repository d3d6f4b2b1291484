r"""Looking inside trained attention: GCNet's query-dependence measurement and map helpers.

GCNet (Cao et al., 2019, §3.1) asked how much a non-local block's attention map depends on
its query. For the maps :math:`a_i \in \mathbb{R}^{N_s}` of the queries
:math:`i = 1 \dots N` of one image it takes the average cosine distance over pairs of
different queries,

.. math::

    \bar d = \frac{1}{N(N-1)} \sum_{i \ne j} \Big(1 - \frac{a_i^\top a_j}{\lVert a_i\rVert\,\lVert a_j\rVert}\Big),

and compares it with the same quantity for the block's input features :math:`x_i` and for its
output. :math:`\bar d = 0` means every query sees the same map (the block computes one global
context, which is what GCNet's context block keeps); for non-negative vectors such as
attention maps :math:`\bar d \le 1`.

:func:`mean_cosine_distance` computes :math:`\bar d` per image from a (B, N, D) stack of
vectors in O(N D + N^2) memory through the Gram matrix of the normalised vectors, using
:math:`\sum_{i \ne j} \hat a_i^\top \hat a_j = \lVert \sum_i \hat a_i \rVert^2 - N`; so it never
builds the N × N matrix. :func:`feature_vectors` turns a (B, C, *spatial) feature map into the
(B, N, C) vectors of its positions.

GCNet's own definition (§3.1 and Table 1 of the paper) differs in two ways, and
:func:`gcnet_avg_dist` follows it: it averages over *all* :math:`N^2` ordered pairs, the
:math:`N` pairs :math:`i = j` (distance 0) included, and it halves the cosine distance,

.. math::

    \mathrm{avg\_dist} = \frac{1}{N^2} \sum_{i=1}^{N} \sum_{j=1}^{N}
        \frac{1 - \cos(v_i, v_j)}{2} = \frac{N-1}{2N}\, \bar d
    \quad\text{(no zero vectors)},

so it lies in [0, 1] for any vectors and in [0, 1/2] for non-negative ones. The paper applies
it to the block's input :math:`x_i`, to its output *before fusion*
:math:`z_i - x_i = W_z y_i` and to the attention maps.

:func:`map_entropy` measures how spread out each map row is: :math:`H_i = -\sum_j a_{ij}
\log a_{ij}`, and :math:`e^{H_i}` is the effective number of keys (:math:`N_s` for a uniform
row, 1 for a one-hot row).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["feature_vectors", "gcnet_avg_dist", "map_entropy", "mean_cosine_distance", "query_map",
           "upsample_map"]


def _unit_vectors(vectors: Tensor, eps: float) -> Tensor:
    """(B, N, D) vectors, N >= 2, normalised to unit length in float64 (zero vectors stay 0)."""
    if not isinstance(vectors, Tensor) or vectors.dim() != 3:
        shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
        raise ValueError(f"vectors must be a (B, N, D) tensor, got {shape}")
    if vectors.shape[1] < 2:
        raise ValueError(f"vectors must hold N >= 2 vectors per sample to compare, got shape {tuple(vectors.shape)}")
    v = vectors.detach().double()
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def mean_cosine_distance(vectors: Tensor, eps: float = 1e-12) -> Tensor:
    r"""Average cosine distance between the vectors of different positions, per sample.

    Args:
        vectors: (B, N, D), N >= 2 vectors of dimension D per sample (attention maps
            (B, N, N_s) as returned by ``NonLocalBlock(..., return_attention=True)``, or
            features from :func:`feature_vectors`).
        eps: guards the normalisation of all-zero vectors (their cosine is taken as 0).

    Returns:
        (B,) tensor: :math:`\frac{1}{N(N-1)}\sum_{i\ne j} (1 - \cos(v_i, v_j))`, in float64.
    """
    unit = _unit_vectors(vectors, eps)  # (B, N, D)
    N = unit.shape[1]
    total = unit.sum(dim=1)  # (B, D): Σ_i â_i
    diag = (unit * unit).sum(dim=(1, 2))  # (B,): Σ_i ‖â_i‖² (N, or fewer for zero vectors)
    off_diagonal = (total * total).sum(dim=-1) - diag  # (B,): Σ_{i≠j} â_iᵀ â_j
    return 1.0 - off_diagonal / (N * (N - 1))


def gcnet_avg_dist(vectors: Tensor, eps: float = 1e-12) -> Tensor:
    r"""GCNet's average distance over all ordered pairs of positions, per sample.

    Args:
        vectors: (B, N, D), N >= 2 vectors per sample: attention maps (B, N, N_s), or
            features from :func:`feature_vectors` (the input x, or z − x for the output
            before fusion, as in the paper's Table 1).
        eps: guards the normalisation of all-zero vectors; a zero vector has cosine 0 with
            every vector, itself included (distance 1/2).

    Returns:
        (B,) tensor: :math:`\frac{1}{N^2}\sum_{i=1}^{N}\sum_{j=1}^{N} \frac{1 - \cos(v_i, v_j)}{2}`,
        in float64, computed as :math:`\frac12 (1 - \lVert \sum_i \hat v_i \rVert^2 / N^2)`.
    """
    unit = _unit_vectors(vectors, eps)  # (B, N, D)
    N = unit.shape[1]
    total = unit.sum(dim=1)  # (B, D): Σ_i v̂_i
    return 0.5 * (1.0 - (total * total).sum(dim=-1) / (N * N))  # Σ_{i,j} v̂_iᵀ v̂_j = ‖Σ_i v̂_i‖²


def map_entropy(attention: Tensor) -> Tensor:
    r"""Entropy of every row of attention maps, :math:`H_i = -\sum_j a_{ij} \log a_{ij}` (nats).

    Args:
        attention: (..., N_s) non-negative weights, one row per query (softmax rows sum to 1),
            e.g. the (B, N, N_s) maps of ``NonLocalBlock(..., return_attention=True)``.

    Returns:
        (...) tensor in float64, with :math:`0 \log 0 = 0`; :math:`e^{H_i}` is the effective
        number of keys, between 1 (one-hot row) and N_s (uniform row).
    """
    if not isinstance(attention, Tensor) or attention.dim() < 1 or attention.shape[-1] < 1:
        shape = tuple(attention.shape) if isinstance(attention, Tensor) else type(attention).__name__
        raise ValueError(f"attention must be a (..., N_s) tensor of weights, got {shape}")
    a = attention.detach().double()
    if bool((a < 0).any()) or not bool(torch.isfinite(a).all()):
        raise ValueError("attention must hold finite, non-negative weights (rows of a softmax map)")
    logs = torch.where(a > 0, a.log(), torch.zeros_like(a))  # 0 log 0 = 0
    return -(a * logs).sum(dim=-1)


def feature_vectors(x: Tensor) -> Tensor:
    """(B, C, *spatial) feature map → (B, N, C) vectors of its N positions."""
    if not isinstance(x, Tensor) or x.dim() < 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (B, C, *spatial) tensor, got {shape}")
    return x.flatten(2).transpose(1, 2)


def query_map(attention: Tensor, query: Sequence[int], query_shape: Sequence[int],
              key_shape: Sequence[int]) -> Tensor:
    """The map of one query position, reshaped to the key grid.

    Args:
        attention: (B, N, N_s) maps with N = prod(query_shape), N_s = prod(key_shape).
        query: the query's coordinates in the query grid, e.g. (row, col).
        query_shape: the query grid, e.g. (H, W) of the block's input.
        key_shape: the key grid, e.g. (H/2, W/2) with sub-sampling.

    Returns:
        (B, *key_shape) weights (they sum to 1 for a softmax map).
    """
    query_shape, key_shape, query = tuple(query_shape), tuple(key_shape), tuple(query)
    if attention.dim() != 3:
        raise ValueError(f"attention must be (B, N, N_s), got shape {tuple(attention.shape)}")
    n, n_s = attention.shape[1:]
    if torch.Size(query_shape).numel() != n or torch.Size(key_shape).numel() != n_s:
        raise ValueError(f"attention of shape {tuple(attention.shape)} does not match query_shape "
                         f"{query_shape} (N = {torch.Size(query_shape).numel()}) and key_shape {key_shape} "
                         f"(N_s = {torch.Size(key_shape).numel()})")
    if len(query) != len(query_shape) or any(not 0 <= q < s for q, s in zip(query, query_shape)):
        raise ValueError(f"query {query} is outside the query grid {query_shape}")
    flat = 0
    for q, s in zip(query, query_shape):
        flat = flat * s + q
    return attention[:, flat].reshape(attention.shape[0], *key_shape)


def upsample_map(weights: Tensor, size: Sequence[int]) -> Tensor:
    """(B, h, w) key-grid weights → (B, H, W) by nearest-neighbour upsampling, for overlays."""
    return F.interpolate(weights[:, None].float(), size=tuple(size), mode="nearest")[:, 0]

