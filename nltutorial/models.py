r"""CIFAR ResNets (He, Zhang, Ren & Sun, *Deep Residual Learning*, CVPR 2016) with attention blocks.

Backbones
---------
``resnet20`` / ``resnet56`` / any depth 6n+2 (§4.2 of the paper): a 3×3 convolution with 16
channels, then three stages of n basic blocks with 16, 32 and 64 channels (feature maps
32×32, 16×16, 8×8; stride 2 in the first block of stages 2 and 3), global average pooling
and a 10-way fully connected layer. ``shortcut="A"`` (default, as in the paper for CIFAR)
is the parameter-free identity, subsampled by 2 and zero-padded in channels where the shape
changes; ``shortcut="B"`` uses a 1×1 convolution + BatchNorm projection there.
ResNet-20 has 0.27 M parameters, ResNet-56 0.85 M (Table 6 of the paper).

``resnet18_cifar``: the ImageNet ResNet-18 adapted to 32×32 inputs as is usual for CIFAR:
3×3 stride-1 stem with 64 channels, no max-pooling, four stages of 2 basic blocks with 64,
128, 256, 512 channels, shortcut "B" (11.17 M parameters with 10 classes).

Module names follow torchvision: ``conv1``, ``bn1``, ``layer1`` … ``layerS``, ``fc``; the
blocks of stage s are ``layer{s}.0`` … ``layer{s}.{n-1}``.

Attention and placement
-----------------------
``attention`` is any name of :func:`nltutorial.factory.create_attention` ("se", "cbam",
"bam", "gc", "nl", "danet", "pam", "cam", "sagan"); ``**attention_kwargs`` go to every
inserted block. A *position* is a pair ``(stage, block)``: ``stage`` is 1-based (as in
``layer2``), ``block`` is 0-based (as in ``layer2.1``). A placement says *where* the block
goes at each position:

    "residual"   inside basic block ``layer{s}.{b}``, on the residual branch after its last
                 BatchNorm, before the addition with the shortcut (module ``layer{s}.{b}.attn``)
    "after"      a separate block on the output of ``layer{s}.{b}`` (after its ReLU), module
                 ``layer{s}.attn{b}``

Defaults (``placement=None``), following each paper:

    se, cbam, gc          "residual", every block of every stage (SE, CBAM and GCNet papers)
    bam                   "after" the last block of every stage except the last (BAM sits at
                          the network's "bottlenecks", where the resolution drops)
    nl, danet, pam,       "after" every other block (0-based blocks 1, 3, 5, …) of stages 2
    cam, sagan            and 3. The NL paper adds blocks to every other residual block of
                          res3 and res4 of ResNet-50. For the 4-stage ResNet-18, stages 2 and 3
                          *are* res3 and res4. The 3-stage CIFAR ResNet has no res5; its
                          stages 2 and 3 (16×16 and 8×8 maps) take the role of res3/res4.

So ResNet-20 (n = 3) gets 9 SE/CBAM/GC blocks, 2 BAM blocks and 2 NL blocks (after
``layer2.1`` and ``layer3.1``); ResNet-56 (n = 9) gets 27, 2 and 8 (blocks 1, 3, 5, 7 of
stages 2 and 3); ResNet-18 gets 8, 3 and 2 (after ``layer2.1`` and ``layer3.1``).

``placement`` overrides the default with either

* a list of positions, e.g. ``[(2, 0), (3, 2)]``, placed as the attention's default "where";
* a dict with optional keys ``"where"`` ("residual" or "after"), ``"stages"`` (1-based
  stage numbers), ``"every"`` (k: blocks b with b % k == k - 1, i.e. every k-th block; 1 =
  all blocks) and ``"blocks"`` (an explicit list of positions; not together with
  ``"stages"``/``"every"``). Missing keys take the attention's default, e.g.
  ``{"stages": (3,)}`` puts NL blocks after blocks 1, 3, … of stage 3 only, and
  ``{"where": "after", "stages": (2, 3), "every": 1}`` puts SE after every block there.

Every inserted block is wrapped in an :class:`AttentionSite`. The blocks of NL, DANet's
PAM/CAM, SAGAN and GC are the identity at initialisation, so inserting them leaves a
network's function unchanged. ``DualAttention`` computes PAM(x) + CAM(x) = 2x at
initialisation; its site therefore averages, 0.5·(PAM(x) + CAM(x)) (same ratio of the
two branches as the paper's sum; the scale matters here because the output feeds the
next residual block, not a new convolution as in the DANet head).

Inspecting attention
--------------------
``model.attention_modules()`` lists the inserted blocks, ``model.named_attention_modules()``
gives ``(site name, block)`` pairs, ``model.nl_blocks()`` the :class:`NonLocalBlock`\ s.
``logits, maps = model(x, return_attention=True)`` also returns ``{site name: map}`` for
every block whose ``forward`` takes ``return_attention`` (the NL block: map (B, N, N_s)).

Initialisation: Kaiming normal (fan_out, ReLU) for the backbone convolutions, BatchNorm
weight 1 and bias 0; the attention blocks keep their own initialisation.
``zero_init_residual=True`` zeroes the last BatchNorm weight of each residual branch.
"""

from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .factory import ATTENTION_NAMES, create_attention
from .nonlocal_block import NonLocalBlock

__all__ = [
    "AttentionHost",
    "AttentionSite",
    "BasicBlock",
    "CifarResNet",
    "DEFAULT_WHERE",
    "WHERES",
    "cifar_resnet",
    "default_placement",
    "resnet18_cifar",
    "resnet20",
    "resnet56",
]

WHERES = ("residual", "after")
SHORTCUTS = ("A", "B")

#: where each attention goes by default: "residual" (in every block) or "after" (separate block)
DEFAULT_WHERE = {"se": "residual", "cbam": "residual", "gc": "residual", "bam": "after",
                 "nl": "after", "danet": "after", "pam": "after", "cam": "after", "sagan": "after"}

Position = Tuple[int, int]


class AttentionSite(nn.Module):
    """Wraps one inserted attention block (``self.attn``): z = scale · attn(x).

    ``scale`` is 0.5 for DANet's ``DualAttention`` (so that it is the identity at
    initialisation), 1 otherwise. When the model records attention maps, blocks whose
    ``forward`` accepts ``return_attention`` are called with it and the map is stored.
    """

    def __init__(self, attn: nn.Module, scale: float = 1.0) -> None:
        super().__init__()
        self.attn = attn
        self.scale = scale
        self.returns_attention = "return_attention" in inspect.signature(attn.forward).parameters
        self.site_name = ""
        self._store: Optional[dict] = None

    def forward(self, x: Tensor) -> Tensor:
        if self._store is not None and self.returns_attention:
            z, a = self.attn(x, return_attention=True)
            self._store[self.site_name] = a
        else:
            z = self.attn(x)
        return z * self.scale if self.scale != 1.0 else z

    def extra_repr(self) -> str:
        return f"scale={self.scale}" if self.scale != 1.0 else ""


class AttentionHost(nn.Module):
    """A backbone with :class:`AttentionSite`\\ s: the inspection and ``forward`` shared by
    :class:`CifarResNet` and ``nltutorial.video_models.VideoResNet``.

    A subclass builds its layers, calls :meth:`_init_weights`, and defines ``features(x)``
    (the pooled features) and ``fc``; ``forward`` is ``fc(features(x))``.
    """

    fc: nn.Linear

    def features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _init_weights(self, conv: type, norm: type) -> None:
        """Kaiming normal (fan_out) for the ``conv`` layers, weight 1 / bias 0 for the ``norm``
        layers, skipping the attention blocks (they keep their own initialisation); then name
        every site after its module path (the keys of the attention maps)."""
        inside_attention = {id(m) for site in self._sites() for m in site.modules()}
        for m in self.modules():
            if id(m) in inside_attention:
                continue
            if isinstance(m, conv):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, norm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for name, site in self.named_modules():
            if isinstance(site, AttentionSite):
                site.site_name = name

    def _sites(self) -> List[AttentionSite]:
        return [m for m in self.modules() if isinstance(m, AttentionSite)]

    def named_attention_modules(self) -> List[Tuple[str, nn.Module]]:
        """(site name, attention block) pairs, in forward order; e.g. ("layer2.attn1", NonLocalBlock)."""
        return [(name, m.attn) for name, m in self.named_modules() if isinstance(m, AttentionSite)]

    def attention_modules(self) -> List[nn.Module]:
        """The inserted attention blocks, in forward order."""
        return [m for _, m in self.named_attention_modules()]

    def nl_blocks(self) -> List[NonLocalBlock]:
        """The inserted :class:`NonLocalBlock`\\ s, in forward order."""
        return [m for m in self.attention_modules() if isinstance(m, NonLocalBlock)]

    def forward(self, x: Tensor, return_attention: bool = False) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """Logits (B, num_classes); with ``return_attention=True`` also ``{site name: map}``
        for the blocks that can return their map (NL: (B, N, N_s), N = positions at the block)."""
        if not return_attention:
            return self.fc(self.features(x))
        maps: Dict[str, Tensor] = {}
        sites = self._sites()
        for site in sites:
            site._store = maps
        try:
            logits = self.fc(self.features(x))
        finally:
            for site in sites:
                site._store = None
        return logits, maps


class ShortcutA(nn.Module):
    """Option A: identity subsampled by ``stride`` and zero-padded to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x


class BasicBlock(nn.Module):
    """3×3 conv–BN–ReLU–3×3 conv–BN (–attention) + shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A",
                 attn: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.attn = attn
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attn is not None:
            out = self.attn(out)
        return F.relu(out + self.shortcut(x))


def _positions(stage_blocks: Sequence[int], stages: Iterable[int], every: int) -> List[Position]:
    return [(s, b) for s in stages for b in range(stage_blocks[s - 1]) if b % every == every - 1]


def default_placement(attention: str, stage_blocks: Sequence[int]) -> Tuple[str, List[Position]]:
    """(where, positions) of ``attention`` by default for stages of ``stage_blocks`` blocks."""
    S = len(stage_blocks)
    where = DEFAULT_WHERE.get(attention, "after")
    if where == "residual":
        return where, _positions(stage_blocks, range(1, S + 1), 1)
    if attention == "bam":
        return where, [(s, stage_blocks[s - 1] - 1) for s in range(1, S)]
    return where, _positions(stage_blocks, [s for s in (2, 3) if s <= S], 2)


def _check_positions(blocks, stage_blocks: Sequence[int]) -> List[Position]:
    out = []
    try:
        items = list(blocks)
    except TypeError:
        raise ValueError(f"placement positions must be a list of (stage, block) pairs, got {blocks!r}") from None
    for p in items:
        ok = isinstance(p, (tuple, list)) and len(p) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in p)
        if not ok or not 1 <= p[0] <= len(stage_blocks) or not 0 <= p[1] < stage_blocks[p[0] - 1]:
            raise ValueError(f"placement position {p!r} is not a (stage, block) pair with stage in "
                             f"1..{len(stage_blocks)} and block in 0..n-1 for stage blocks {tuple(stage_blocks)}")
        out.append((p[0], p[1]))
    if len(set(out)) != len(out):
        raise ValueError(f"placement positions must be distinct, got {items!r}")
    return sorted(out)


def resolve_placement(attention: str, placement, stage_blocks: Sequence[int]) -> Tuple[str, List[Position]]:
    """Turn ``placement`` (None, list of positions or dict; see the module docstring) into
    (where, sorted positions). Raises ValueError naming ``placement`` on bad input."""
    where, positions = default_placement(attention, stage_blocks)
    if placement is None:
        return where, positions
    if isinstance(placement, dict):
        unknown = set(placement) - {"where", "stages", "every", "blocks"}
        if unknown:
            raise ValueError(f"placement got unknown key(s) {sorted(unknown)}; "
                             f"it accepts 'where', 'stages', 'every', 'blocks'")
        where = placement.get("where", where)
        if where not in WHERES:
            raise ValueError(f"placement['where'] must be one of {WHERES}, got {where!r}")
        if "blocks" in placement:
            if "stages" in placement or "every" in placement:
                raise ValueError("placement: give 'blocks', or 'stages'/'every', not both")
            return where, _check_positions(placement["blocks"], stage_blocks)
        if "stages" in placement or "every" in placement:
            S = len(stage_blocks)
            default_stages = sorted({s for s, _ in positions}) or list(range(1, S + 1))
            stages = placement.get("stages", default_stages)
            if isinstance(stages, int):
                stages = (stages,)
            every = placement.get("every", 1 if where == "residual" else 2)
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ValueError(f"placement['every'] must be a positive int, got {every!r}")
            try:
                stages = list(stages)
            except TypeError:
                raise ValueError(f"placement['stages'] must be stage numbers, got {stages!r}") from None
            if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= S for s in stages) \
                    or len(set(stages)) != len(stages):
                raise ValueError(f"placement['stages'] must be distinct stage numbers in 1..{S}, got {stages!r}")
            positions = _positions(stage_blocks, sorted(stages), every)
        return where, positions
    if isinstance(placement, str):
        raise ValueError(f"placement must be None, a list of (stage, block) pairs or a dict, got {placement!r}")
    return where, _check_positions(placement, stage_blocks)


class CifarResNet(AttentionHost):
    """ResNet of basic blocks for 32×32 inputs, optionally with attention blocks.

    Args:
        stage_blocks: blocks per stage, e.g. (3, 3, 3) for ResNet-20.
        widths: channels per stage, e.g. (16, 32, 64).
        stem_channels: channels of the 3×3 stem convolution (= widths[0] usually).
        num_classes: outputs of the final linear layer.
        shortcut: "A" (zero-padded identity) or "B" (1×1 conv + BN) where shapes change.
        attention: None or a :data:`~nltutorial.factory.ATTENTION_NAMES` name.
        placement: see the module docstring.
        zero_init_residual: zero the weight of each block's last BatchNorm.
        **attention_kwargs: passed to ``create_attention`` for every inserted block.
    """

    def __init__(self, stage_blocks: Sequence[int], widths: Sequence[int], stem_channels: int,
                 num_classes: int = 10, shortcut: str = "A", attention: Optional[str] = None,
                 placement=None, zero_init_residual: bool = False, in_channels: int = 3,
                 **attention_kwargs) -> None:
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if attention is not None:
            if not isinstance(attention, str) or attention.lower() not in ATTENTION_NAMES:
                raise ValueError(f"attention must be None or one of {ATTENTION_NAMES}, got {attention!r}")
            attention = attention.lower()
        elif placement is not None:
            raise ValueError("placement needs an attention, got attention=None")
        elif attention_kwargs:
            raise ValueError(f"attention keyword arguments {sorted(attention_kwargs)} need an attention")
        self.stage_blocks, self.widths = tuple(stage_blocks), tuple(widths)
        self.attention, self.shortcut_type = attention, shortcut
        where, positions = (None, []) if attention is None else \
            resolve_placement(attention, placement, self.stage_blocks)
        self.where, self.positions = where, positions

        def make_site(channels: int) -> AttentionSite:
            attn = create_attention(attention, channels, **attention_kwargs)
            return AttentionSite(attn, 0.5 if attention == "danet" else 1.0)

        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        c_in = stem_channels
        for s, (n, width) in enumerate(zip(self.stage_blocks, self.widths), start=1):
            layers = OrderedDict()
            for b in range(n):
                here = (s, b) in positions
                stride = 2 if (b == 0 and s > 1) else 1
                layers[str(b)] = BasicBlock(c_in, width, stride, shortcut,
                                            make_site(width) if here and where == "residual" else None)
                if here and where == "after":
                    layers[f"attn{b}"] = make_site(width)
                c_in = width
            self.add_module(f"layer{s}", nn.Sequential(layers))
        self.fc = nn.Linear(c_in, num_classes)

        self._init_weights(nn.Conv2d, nn.BatchNorm2d)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    @property
    def stages(self) -> List[nn.Sequential]:
        return [getattr(self, f"layer{s}") for s in range(1, len(self.stage_blocks) + 1)]

    def features(self, x: Tensor) -> Tensor:
        """The pooled features (B, C_last) fed to ``fc``."""
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


_CIFAR_DEPTHS = "an int 6n+2 (20, 32, 44, 56, 110, …), 18, or a name 'resnet20', 'resnet56', 'resnet18_cifar'"


def _parse_depth(depth_or_name) -> Union[int, str]:
    """6n+2 depth -> n (int); ResNet-18 -> "resnet18"."""
    value = depth_or_name
    if isinstance(value, str):
        m = re.fullmatch(r"(?:resnet|resnet-|resnet_)?(\d+)(_cifar)?", value.strip().lower())
        if m is None:
            raise ValueError(f"depth_or_name must be {_CIFAR_DEPTHS}, got {depth_or_name!r}")
        value = int(m.group(1))
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"depth_or_name must be {_CIFAR_DEPTHS}, got {depth_or_name!r}")
    if value == 18:
        return "resnet18"
    if value < 8 or (value - 2) % 6:
        raise ValueError(f"depth_or_name: a CIFAR ResNet has depth 6n+2 with n >= 1 (or is ResNet-18), "
                         f"got {depth_or_name!r}")
    return (value - 2) // 6


def cifar_resnet(depth_or_name: Union[int, str], num_classes: int = 10, attention: Optional[str] = None,
                 placement=None, *, shortcut: Optional[str] = None, zero_init_residual: bool = False,
                 **attention_kwargs) -> CifarResNet:
    """A CIFAR ResNet by depth or name, optionally with attention blocks.

    Args:
        depth_or_name: 6n+2 (20, 32, 44, 56, 110, … : the 3-stage 16-32-64 network of §4.2),
            18 or "resnet18"/"resnet18_cifar" (the 4-stage 64-…-512 network); "resnet20" etc.
        num_classes: outputs of the classifier (10).
        attention: None or a name of ``create_attention``.
        placement: None (each paper's default) or an override, see the module docstring.
        shortcut: "A" or "B"; default "A" for 6n+2 networks (paper), "B" for ResNet-18.
        zero_init_residual: zero-initialise the last BN of each residual branch.
        **attention_kwargs: the attention block's own arguments (e.g. ``rd_ratio``, ``mode``).
    """
    n = _parse_depth(depth_or_name)
    common = dict(num_classes=num_classes, attention=attention, placement=placement,
                  zero_init_residual=zero_init_residual, **attention_kwargs)
    if n == "resnet18":
        return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), 64, shortcut=shortcut or "B", **common)
    return CifarResNet((n, n, n), (16, 32, 64), 16, shortcut=shortcut or "A", **common)


def resnet20(num_classes: int = 10, attention: Optional[str] = None, placement=None, **kwargs) -> CifarResNet:
    """ResNet-20 (n = 3, 0.27 M parameters), shortcut "A" by default. See :func:`cifar_resnet`."""
    return cifar_resnet(20, num_classes, attention, placement, **kwargs)


def resnet56(num_classes: int = 10, attention: Optional[str] = None, placement=None, **kwargs) -> CifarResNet:
    """ResNet-56 (n = 9, 0.85 M parameters), shortcut "A" by default. See :func:`cifar_resnet`."""
    return cifar_resnet(56, num_classes, attention, placement, **kwargs)


def resnet18_cifar(num_classes: int = 10, attention: Optional[str] = None, placement=None,
                   **kwargs) -> CifarResNet:
    """ResNet-18 for CIFAR (3×3 stem, no max-pool, 11.17 M parameters), shortcut "B" by default."""
    return cifar_resnet(18, num_classes, attention, placement, **kwargs)
