r"""Small video ResNets, C2D and I3D, with space-time non-local blocks (Wang et al., CVPR 2018, §4).

Input: a float clip x of shape (B, C_in, T, H, W). Every convolution is a ``Conv3d`` with
kernel t×k×k (time × rows × columns); BatchNorm is ``BatchNorm3d``.

Backbones
---------
Both networks are a small ResNet of *basic* blocks (He et al., 2016), scaled for CPU
training on the 32×32 clips of :func:`nltutorial.video.moving_shapes`::

    conv1    1×3×3 (C2D) or 3×3×3 (I3D), ``width`` channels, stride (1, 2, 2)   T × H/2 × W/2
    layer1   ``stage_blocks[0]`` basic blocks,  width channels                  T × H/2 × W/2
    layer2   ``stage_blocks[1]`` basic blocks, 2·width channels, stride (1,2,2)  T × H/4 × W/4
    layer3   ``stage_blocks[2]`` basic blocks, 4·width channels, stride (1,2,2)  T × H/8 × W/8
    pool     global average over T × H × W, then ``fc`` (linear) to num_classes

A basic block is conv1 (kt×3×3, spatial stride s) - BN - ReLU - conv2 (1×3×3) - BN, plus the
shortcut (identity, or 1×1×1 conv with stride (1, s, s) + BN where the shape changes), then ReLU.
Time is never sub-sampled, so the T frames stay T feature maps down to the pooling.

**C2D** (the paper's "C2D" baseline, Table 1): every kernel is 1×k×k, i.e. a 2-D
convolution applied to each frame separately; frames meet only in the final average:

    logits = W_fc · mean_{t,h,w} F(x_t)[:, h, w] + b_fc,    F = the 2-D ResNet

(the paper's C2D also max-pools over time in its early layers, which only shortens a 32-frame
input; with 8 frames we keep all of them, and this way C2D is *exactly* a frame-wise 2-D network,
blind to the order of the frames).

**I3D** (Carreira & Zisserman, 2017; the paper's "I3D_{3×3×3}" baseline, Table 2a): the same
network with some kernels *inflated* in time. The NL paper inflates "one kernel for every 2
residual blocks"; here conv1 of blocks 0, 2, 4, … of every stage becomes 3×3×3, and so does the
stem (the paper's I3D stem is 5×7×7). With the default ``stage_blocks=(1, 1, 1)`` that is 4
inflated convolutions: a temporal receptive field of 1 + 4·2 = 9 frames.

Inflation (Carreira & Zisserman §2.3): a 2-D kernel w (k×k) becomes a 3-D kernel of t
copies, w_3d[τ] = w / t, so that on a *static* clip (every frame the same image) the 3-D
convolution gives exactly the 2-D result: Σ_τ w_3d[τ] * x = w * x. For that identity to hold in
the first and last frames as well, I3D pads **time by repeating the edge frames**
(``temporal_padding="replicate"``, the default; "zeros" is the usual zero padding, under
which the edge frames see t - 1 zero frames). :func:`inflate_state_dict` maps C2D weights
onto an I3D this way ("mean", the paper's initialisation) or by putting w in the centre tap
and zeros elsewhere ("center": then I3D equals C2D on *every* clip, static or not).

Non-local blocks
----------------
``attention="nl3d"`` inserts :class:`~nltutorial.nonlocal_block.NonLocalBlock` with
``dimension=3`` (space-time: N = T·H·W positions, i and j range over all frames) *after*
blocks 1, 3, 5, … (after block 0 in a stage of one block) of the middle stages 2 and 3. The
paper adds 5 (or 10) blocks to res3 and res4 of ResNet-50, "to every other residual block";
our three stages have no res5, so stages 2 and 3 (H/4 and H/8 maps) play res3 and res4, as in
:mod:`nltutorial.models`. ``nl_stages`` and the NonLocalBlock's own arguments change this. Default
block: embedded Gaussian, d = C/2, sub-sampling by a 1×2×2 max-pool on φ and g (§3.3), W_z
followed by BatchNorm initialised to zero (so a fresh NL model computes exactly the
function of the model without them). Blocks are named ``layer{s}.attn{b}``; with the default
``stage_blocks=(1, 1, 1)`` there are two, ``layer2.attn0`` and ``layer3.attn0``.

Default size
------------
``width=16`` and one block a stage (16, 32, 64 channels): per 3×8×32×32 clip,

    model        parameters   MFLOPs
    C2D            77,522      50.0
    C2D + NL3D     88,194      58.9
    I3D           129,074      91.3
    I3D + NL3D    139,746     100.2

small enough to train C2D (+ NL3D) on the 4000 clips of ``moving_shapes()`` for 10 epochs in
one to two minutes on a CPU. (Narrower networks train faster but, on the same/different task,
more often get stuck telling only some of the shape types apart.)

For every non-local block,

    z_i = W_z y_i + x_i,   y_i = Σ_j softmax_j(θ(x_i)ᵀ φ(x_j)) g(x_j),   i, j ∈ T×H×W

and ``model(x, return_attention=True)`` returns ``(logits, {site: map})`` with each map
(B, N, N_s), the softmax weights of the N = T·H·W queries over the N_s = T·⌊H/2⌋·⌊W/2⌋ keys
(H, W here: the feature map at the block, i.e. H/4 × W/4 or H/8 × W/8 of the clip).

A non-local block treats the T·H·W positions as a set: C2D + NL3D, like C2D, gives the same
output for any reordering of the frames, but it can relate any two of them in one step.

Initialisation: Kaiming normal (fan_out) for the backbone convolutions, BatchNorm weight 1 and
bias 0, the non-local blocks their own (zero W_z).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import check_int
from .models import AttentionHost, AttentionSite
from .nonlocal_block import NonLocalBlock

__all__ = [
    "BasicBlock3d",
    "SpaceTimeConv",
    "VIDEO_ATTENTIONS",
    "VIDEO_MODELS",
    "VideoResNet",
    "inflate_state_dict",
    "video_resnet",
]

VIDEO_MODELS = ("c2d", "i3d")
VIDEO_ATTENTIONS = ("nl3d",)
TEMPORAL_PADDINGS = ("replicate", "zeros")


class SpaceTimeConv(nn.Conv3d):
    """A t×k×k ``Conv3d`` (bias-free) with 'same' padding, spatial stride ``stride``.

    Space is zero-padded by k//2. Time is padded by t//2 frames on each side with
    ``temporal_padding``: "zeros", or "replicate" (the first and last frames are repeated;
    a t×k×k kernel of t equal taps then acts on a static clip exactly like its 2-D sum).
    Its state-dict entry is ``weight`` of shape (out, in, t, k, k), as a plain ``Conv3d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_t: int = 1, kernel_s: int = 3,
                 stride: int = 1, temporal_padding: str = "replicate") -> None:
        if temporal_padding not in TEMPORAL_PADDINGS:
            raise ValueError(f"temporal_padding must be one of {TEMPORAL_PADDINGS}, got {temporal_padding!r}")
        pad_t = kernel_t // 2 if temporal_padding == "zeros" else 0
        super().__init__(in_channels, out_channels, (kernel_t, kernel_s, kernel_s), stride=(1, stride, stride),
                         padding=(pad_t, kernel_s // 2, kernel_s // 2), bias=False)
        self.temporal_padding = temporal_padding
        self._replicate = kernel_t // 2 if temporal_padding == "replicate" else 0

    def forward(self, x: Tensor) -> Tensor:
        if self._replicate:                                     # (B, C, T, H, W) -> (B, C, T + 2p, H, W)
            p = self._replicate
            x = torch.cat([x[:, :, :1].expand(-1, -1, p, -1, -1), x,
                           x[:, :, -1:].expand(-1, -1, p, -1, -1)], dim=2)
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", temporal_padding={self.temporal_padding!r}"
                                       if self.kernel_size[0] > 1 else "")


class BasicBlock3d(nn.Module):
    """kt×3×3 conv–BN–ReLU–1×3×3 conv–BN + shortcut, then ReLU; spatial stride ``stride``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, kernel_t: int = 1,
                 temporal_padding: str = "replicate") -> None:
        super().__init__()
        self.conv1 = SpaceTimeConv(in_channels, out_channels, kernel_t, 3, stride, temporal_padding)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = SpaceTimeConv(out_channels, out_channels, 1, 3, 1)
        self.bn2 = nn.BatchNorm3d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(out_channels))

    def forward(self, x: Tensor) -> Tensor:                     # (B, C_in, T, H, W)
        out = F.relu(self.bn1(self.conv1(x)))                   # (B, C, T, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class VideoResNet(AttentionHost):
    """C2D or I3D ResNet for clips (B, C_in, T, H, W), optionally with space-time NL blocks.

    Args:
        temporal_kernels: per stage, a tuple with the temporal kernel size of conv1 of each
            block (1 = 2-D); e.g. ((3, 1), (3, 1), (3, 1)) for I3D with 2 blocks a stage.
        stem_kernel_t: temporal kernel of the stem conv1 (1 for C2D, 3 for I3D).
        num_classes: outputs of ``fc``.
        in_channels: C_in (3 for RGB).
        width: channels of the stem and stage 1; stages 2 and 3 have 2·width and 4·width.
        attention: None or "nl3d".
        nl_stages: stages that get NL blocks (after blocks 1, 3, …); default (2, 3).
        temporal_padding: "replicate" (default) or "zeros", for the inflated convolutions.
        **attention_kwargs: passed to every ``NonLocalBlock`` (e.g. ``mode``, ``sub_sample``).

    Use :func:`video_resnet` to build the two named networks.
    """

    def __init__(self, temporal_kernels: Sequence[Sequence[int]], stem_kernel_t: int = 1,
                 num_classes: int = 2, in_channels: int = 3, width: int = 16,
                 attention: Optional[str] = None, nl_stages: Sequence[int] = (2, 3),
                 temporal_padding: str = "replicate", **attention_kwargs) -> None:
        super().__init__()
        check_int("num_classes", num_classes, 1)
        check_int("in_channels", in_channels, 1)
        check_int("width", width, 1)
        if attention is not None and attention not in VIDEO_ATTENTIONS:
            raise ValueError(f"attention must be None or one of {VIDEO_ATTENTIONS}, got {attention!r}")
        if attention is None and attention_kwargs:
            raise ValueError(f"attention keyword arguments {sorted(attention_kwargs)} need attention='nl3d'")
        if temporal_padding not in TEMPORAL_PADDINGS:
            raise ValueError(f"temporal_padding must be one of {TEMPORAL_PADDINGS}, got {temporal_padding!r}")
        kernels = [tuple(int(k) for k in stage) for stage in temporal_kernels]
        if len(kernels) != 3 or any(len(s) < 1 or any(k < 1 or k % 2 == 0 for k in s) for s in kernels):
            raise ValueError(f"temporal_kernels must give 3 stages of odd kernel sizes >= 1, got {temporal_kernels!r}")
        nl_stages = tuple(nl_stages)
        if any(s not in (1, 2, 3) for s in nl_stages):
            raise ValueError(f"nl_stages must be stage numbers in 1..3, got {nl_stages!r}")
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        self.attention, self.temporal_padding = attention, temporal_padding
        self.temporal_kernels, self.stem_kernel_t = tuple(kernels), int(stem_kernel_t)
        self.stage_blocks = tuple(len(s) for s in kernels)
        self.widths = (width, 2 * width, 4 * width)
        self.positions: List[Tuple[int, int]] = [] if attention is None else \
            [(s, b) for s in sorted(nl_stages) for b in range(self.stage_blocks[s - 1])
             if b % 2 == 1 or self.stage_blocks[s - 1] == 1]

        self.conv1 = SpaceTimeConv(in_channels, width, self.stem_kernel_t, 3, 2, temporal_padding)
        self.bn1 = nn.BatchNorm3d(width)
        c_in = width
        for s, (ks, c) in enumerate(zip(kernels, self.widths), start=1):
            layers = OrderedDict()
            for b, kt in enumerate(ks):
                stride = 2 if (b == 0 and s > 1) else 1
                layers[str(b)] = BasicBlock3d(c_in, c, stride, kt, temporal_padding)
                if (s, b) in self.positions:                    # (B, c, T, h, w) -> same shape
                    block = NonLocalBlock(c, dimension=3, **attention_kwargs)
                    layers[f"attn{b}"] = AttentionSite(block)
                c_in = c
            self.add_module(f"layer{s}", nn.Sequential(layers))
        self.fc = nn.Linear(c_in, num_classes)

        self._init_weights(nn.Conv3d, nn.BatchNorm3d)

    # ---- inspection (the attention sites: see AttentionHost)
    @property
    def stages(self) -> List[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    # ---- forward
    def _check_input(self, x) -> None:
        expected = f"(B, {self.in_channels}, T, H, W)"
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a clip tensor of shape {expected}, got {type(x).__name__}")
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            hint = " (a batch of images? add the time axis: x.unsqueeze(2))" if x.dim() == 4 else ""
            raise ValueError(f"x must have shape {expected}, got {tuple(x.shape)}{hint}")
        if min(x.shape) < 1 or x.shape[3] < 8 or x.shape[4] < 8:
            raise ValueError(f"x must have shape {expected} with T >= 1 and H, W >= 8, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor (normalise uint8 clips first), got {x.dtype}")

    def features(self, x: Tensor) -> Tensor:
        """The pooled features (B, 4·width) fed to ``fc``: mean over T, H and W."""
        self._check_input(x)
        x = F.relu(self.bn1(self.conv1(x)))                     # (B, w, T, H/2, W/2)
        for stage in self.stages:
            x = stage(x)                                        # (B, 4w, T, H/8, W/8) at the end
        return x.mean(dim=(2, 3, 4))                            # (B, 4w)


def video_resnet(name: str, num_classes: int = 2, attention: Optional[str] = None, *,
                 in_channels: int = 3, width: int = 16, stage_blocks: Sequence[int] = (1, 1, 1),
                 temporal_padding: str = "replicate", nl_stages: Sequence[int] = (2, 3),
                 **attention_kwargs) -> VideoResNet:
    """A C2D or I3D video ResNet, optionally with space-time non-local blocks.

    Args:
        name: "c2d" (all kernels 1×k×k) or "i3d" (stem and conv1 of blocks 0, 2, … 3×3×3).
        num_classes: outputs of the classifier.
        attention: None (or "none") or "nl3d": NonLocalBlock(dimension=3) after blocks 1, 3, …
            of stages ``nl_stages`` (default 2 and 3, the paper's res3 and res4).
        in_channels: channels of the clips (3 for RGB).
        width: channels of stage 1 (stages 2, 3: 2·width, 4·width).
        stage_blocks: basic blocks per stage (3 stages).
        temporal_padding: I3D's time padding, "replicate" (default) or "zeros".
        **attention_kwargs: the NonLocalBlock's own arguments (``mode``, ``sub_sample``, …).

    With the defaults (16 channels, 1 block a stage, 2 classes) C2D has 77,522 parameters.
    """
    if not isinstance(name, str) or name.lower() not in VIDEO_MODELS:
        raise ValueError(f"name must be one of {VIDEO_MODELS}, got {name!r}")
    if isinstance(attention, str) and attention.lower() == "none":
        attention = None
    if attention is not None and (not isinstance(attention, str) or attention.lower() not in VIDEO_ATTENTIONS):
        raise ValueError(f"attention must be None, 'none' or one of {VIDEO_ATTENTIONS}, got {attention!r}")
    blocks = tuple(stage_blocks) if not isinstance(stage_blocks, (str, bytes)) else ()
    if len(blocks) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in blocks):
        raise ValueError(f"stage_blocks must be 3 positive ints, got {stage_blocks!r}")
    i3d = name.lower() == "i3d"
    kernels = [tuple(3 if (i3d and b % 2 == 0) else 1 for b in range(n)) for n in blocks]
    return VideoResNet(kernels, 3 if i3d else 1, num_classes=num_classes, in_channels=in_channels,
                       width=width, attention=None if attention is None else attention.lower(),
                       nl_stages=nl_stages, temporal_padding=temporal_padding, **attention_kwargs)


INFLATIONS = ("mean", "center")


def inflate_state_dict(state_2d: Dict[str, Tensor], model: nn.Module, inflation: str = "mean") -> Dict[str, Tensor]:
    """Map a C2D state dict onto ``model`` (an I3D of the same layout) by inflating kernels.

    Every weight whose shape differs only in the temporal kernel size, (out, in, 1, k, k) in
    ``state_2d`` vs (out, in, t, k, k) in the model, is inflated: "mean" repeats it t times
    divided by t (Carreira & Zisserman; equal to the 2-D result on a static clip), "center"
    puts it in the middle tap and zeros in the others (equal to the 2-D result on any clip).
    Other entries are copied. Returns a new state dict for ``model.load_state_dict``.
    """
    if inflation not in INFLATIONS:
        raise ValueError(f"inflation must be one of {INFLATIONS}, got {inflation!r}")
    target = model.state_dict()
    out = {}
    for key, value in state_2d.items():
        if key not in target:
            raise ValueError(f"state_2d has {key!r}, which the model does not")
        shape = target[key].shape
        if value.shape == shape:
            out[key] = value.clone()
        elif value.dim() == 5 and value.shape[2] == 1 and value.shape[:2] == shape[:2] \
                and value.shape[3:] == shape[3:]:
            t = shape[2]
            if inflation == "mean":
                out[key] = value.repeat(1, 1, t, 1, 1) / t
            else:
                w = torch.zeros(shape, dtype=value.dtype, device=value.device)
                w[:, :, t // 2] = value[:, :, 0]
                out[key] = w
        else:
            raise ValueError(f"{key}: cannot inflate shape {tuple(value.shape)} to {tuple(shape)}")
    return out
