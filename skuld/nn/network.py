"""The Local Discrimination network: a narrow VGG-16-BN encoder, a U-Net decoder and two heads.

All modules take and return tensors of shape ``(N, C, H, W)``; ``H`` and ``W`` must be
multiples of :data:`SIZE_MULTIPLE` (the encoder halves the resolution four times).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

#: Input height and width must be multiples of this (four 2x poolings).
SIZE_MULTIPLE = 16

#: Channel configuration of the narrow VGG-16-BN encoder; "M" is a 2x2 max-pool.
VGG16_NARROW = (16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128, "M")

#: Decoder levels from coarse to fine: (middle width, output width) of the two convolutions
#: after each x2 upsampling and skip concatenation. The last level is the full-resolution trunk.
DECODER_WIDTHS = ((128, 64), (64, 32), (32, 16), (32, 32))


def _scaled(width: int, multiplier: float) -> int:
    return max(1, int(round(width * multiplier)))


class _L2Normalize(torch.autograd.Function):
    """Unit vectors along dim 1 with a hand-written backward: fewer full-resolution temporaries
    than autograd's composition of norm, clamp and division (this runs on every pixel)."""

    @staticmethod
    def forward(ctx, x):
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12)
        y = x / norm
        ctx.save_for_backward(y, norm)
        return y

    @staticmethod
    def backward(ctx, grad):
        y, norm = ctx.saved_tensors
        return (grad - y * (grad * y).sum(1, keepdim=True)).div_(norm)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Divide by the L2 norm along dim 1 (the channel axis of ``(N, C, H, W)``).

    Like ``torch.nn.functional.normalize`` but with a hand-written backward pass that keeps
    no extra full-resolution tensors.

    Parameters
    ----------
    x : Tensor of shape (N, C, ...)

    Returns
    -------
    Tensor
        Same shape and dtype, unit norm along dim 1.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import l2_normalize
    >>> l2_normalize(torch.tensor([[3.0, 4.0]]))
    tensor([[0.6000, 0.8000]])
    """
    return _L2Normalize.apply(x)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (padding 1), batch norm and ReLU: the building block of the network.

    Parameters
    ----------
    in_channels, out_channels : int

    Returns
    -------
    torch.nn.Sequential
        Maps ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import conv_bn_relu
    >>> conv_bn_relu(1, 8)(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def check_spatial_size(x: torch.Tensor) -> None:
    """Check that a batch can go through the network: ``(N, C, H, W)`` with H, W multiples of 16.

    Parameters
    ----------
    x : Tensor
        The batch.

    Raises
    ------
    ValueError
        Naming the shape, when ``x`` is not 4-D or H, W are not positive multiples of 16.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import check_spatial_size
    >>> check_spatial_size(torch.zeros(1, 1, 32, 48))
    >>> check_spatial_size(torch.zeros(1, 1, 30, 48))
    Traceback (most recent call last):
        ...
    ValueError: height and width must be positive multiples of 16, got 30 x 48; pad the input (the estimators do this for you)
    """
    if x.ndim != 4:
        raise ValueError(f"expected a batch of shape (N, C, H, W), got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE or h == 0 or w == 0:
        raise ValueError(
            f"height and width must be positive multiples of {SIZE_MULTIPLE}, got {h} x {w}; "
            "pad the input (the estimators do this for you)"
        )


class VGGEncoder(nn.Module):
    """Narrow VGG-16-BN encoder returning the five feature maps taken before each max-pool.

    Parameters
    ----------
    in_channels : int
        1 (gray) or 3 (RGB).
    width : float, default=1.0
        Width multiplier applied to every layer (2.0 for the "x2" variant, 4.0 for the
        channel widths of the full VGG-16).

    Notes
    -----
    ``forward(x)`` with ``x`` of shape ``(N, in_channels, H, W)`` returns a list of five
    tensors of shapes ``(N, c_i, H / 2**i, W / 2**i)`` for ``i = 0..4``, with ``c_i`` in
    :attr:`out_channels` (16, 32, 64, 128, 128 at width 1). :attr:`strides` gives ``2**i``.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import VGGEncoder
    >>> encoder = VGGEncoder(in_channels=1)
    >>> [tuple(f.shape) for f in encoder(torch.zeros(1, 1, 64, 64))]
    [(1, 16, 64, 64), (1, 32, 32, 32), (1, 64, 16, 16), (1, 128, 8, 8), (1, 128, 4, 4)]
    """

    def __init__(self, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        self.in_channels = in_channels
        self.width = width
        stages: list[nn.Sequential] = []
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG16_NARROW:
            if item == "M":
                stages.append(nn.Sequential(*layers))
                layers = []
            else:
                out = _scaled(item, width)
                layers.append(conv_bn_relu(channels, out))
                channels = out
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(stage[-1][0].out_channels for stage in self.stages)
        self.strides = tuple(2**i for i in range(len(self.stages)))
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            if i:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """U-Net decoder: nearest x2 upsampling, skip concatenation, two conv-BN-ReLU per level.

    Parameters
    ----------
    encoder_channels : tuple of int
        Channels of the encoder's five feature maps (``VGGEncoder.out_channels``).
    width : float, default 1.0
        Width multiplier (the encoder's).

    Attributes
    ----------
    out_channels : int
        Channels of the output trunk (32 at width 1).

    Notes
    -----
    ``forward(features)`` takes the encoder's five maps and returns the full-resolution trunk
    of shape ``(N, out_channels, H, W)``.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import UNetDecoder, VGGEncoder
    >>> encoder = VGGEncoder(in_channels=1)
    >>> decoder = UNetDecoder(encoder.out_channels)
    >>> decoder(encoder(torch.zeros(1, 1, 64, 64))).shape
    torch.Size([1, 32, 64, 64])
    """

    def __init__(self, encoder_channels: tuple[int, ...], width: float = 1.0):
        super().__init__()
        channels = encoder_channels[-1]
        levels = []
        for skip, (mid, out) in zip(reversed(encoder_channels[:-1]), DECODER_WIDTHS):
            mid, out = _scaled(mid, width), _scaled(out, width)
            levels.append(nn.Sequential(conv_bn_relu(channels + skip, mid), conv_bn_relu(mid, out)))
            channels = out
        self.levels = nn.ModuleList(levels)
        self.out_channels = channels
        _kaiming_init(self)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for level, skip in zip(self.levels, reversed(features[:-1])):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = level(torch.cat([x, skip], dim=1))
        return x


class Head(nn.Module):
    """conv3x3 - BN - ReLU - conv3x3: the shape of the embedding and clustering heads.

    Parameters
    ----------
    in_channels : int
        Channels of the trunk.
    out_channels : int
        D for the embedding head, K for the clustering head.

    Notes
    -----
    ``forward(x)`` maps ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)`` (no
    normalisation: :class:`LDNet` applies it).

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import Head
    >>> Head(32, 16)(torch.zeros(1, 32, 8, 8)).shape
    torch.Size([1, 16, 8, 8])
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.body = conv_bn_relu(in_channels, out_channels)
        self.out = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class LDNet(nn.Module):
    """The pretraining network: encoder, decoder, embedding head and clustering head.

    Parameters
    ----------
    in_channels : int, default=3
        1 (gray) or 3 (RGB).
    embedding_dim : int, default=32
        D, the length of each pixel's unit embedding.
    n_clusters : int, default=16
        K, the number of soft clusters of the clustering head.
    width : float, default=1.0
        Width multiplier of encoder and decoder.

    Notes
    -----
    ``trunk(x)`` maps ``(N, C, H, W)`` to the ``(N, 32, H, W)`` decoder trunk;
    ``embed(trunk)`` gives ``(N, D, H, W)`` unit vectors (L2 norm 1 along dim 1);
    ``cluster(trunk)`` gives ``(N, K, H, W)`` non-negative maps that sum to 1 along dim 1
    (sigmoid then L1 normalisation, not a softmax); ``forward(x)`` returns both.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import LDNet
    >>> net = LDNet(in_channels=1, embedding_dim=32, n_clusters=16)
    >>> z, a = net(torch.rand(2, 1, 64, 64))
    >>> z.shape, a.shape
    (torch.Size([2, 32, 64, 64]), torch.Size([2, 16, 64, 64]))
    >>> bool(torch.allclose(z.norm(dim=1), torch.ones(2, 64, 64), atol=1e-5))
    True
    >>> bool(torch.allclose(a.sum(dim=1), torch.ones(2, 64, 64), atol=1e-5))
    True
    """

    def __init__(self, in_channels: int = 3, embedding_dim: int = 32, n_clusters: int = 16, width: float = 1.0):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
        self.in_channels = in_channels
        self.embedding_dim = embedding_dim
        self.n_clusters = n_clusters
        self.width = width
        self.encoder = VGGEncoder(in_channels, width)
        self.decoder = UNetDecoder(self.encoder.out_channels, width)
        self.embedding_head = Head(self.decoder.out_channels, embedding_dim)
        self.cluster_head = Head(self.decoder.out_channels, n_clusters)

    def config(self) -> dict:
        """Constructor arguments, enough to rebuild the module before loading a state dict.

        Examples
        --------
        >>> from skuld.nn.network import LDNet
        >>> LDNet(in_channels=1).config()
        {'in_channels': 1, 'embedding_dim': 32, 'n_clusters': 16, 'width': 1.0}
        """
        return dict(
            in_channels=self.in_channels,
            embedding_dim=self.embedding_dim,
            n_clusters=self.n_clusters,
            width=self.width,
        )

    #: When True (and training), the full-resolution layers (first encoder stage, last
    #: decoder level, embedding head) keep no activations and are recomputed in backward
    #: (7.9 instead of 10.5 GiB at 448 px, batch 4, float32). Not part of the state dict.
    memory_saving: bool = False

    def _saving(self) -> bool:
        return self.memory_saving and self.training and torch.is_grad_enabled()

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_size(x)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"the network takes {self.in_channels} channel(s), got {x.shape[1]}")
        if not self._saving():
            return self.decoder(self.encoder(x))
        stages = self.encoder.stages
        feats = [_recomputed(stages[0], x)]
        for stage in stages[1:]:
            feats.append(stage(F.max_pool2d(feats[-1], 2)))
        y = feats[-1]
        levels = self.decoder.levels
        for i, (level, skip) in enumerate(zip(levels, reversed(feats[:-1]))):
            y = torch.cat([F.interpolate(y, scale_factor=2, mode="nearest"), skip], dim=1)
            y = _recomputed(level, y) if i == len(levels) - 1 else level(y)
        return y

    def embed(self, trunk: torch.Tensor) -> torch.Tensor:
        if self._saving():
            return _recomputed(lambda t: l2_normalize(self.embedding_head(t).float()), trunk, self.embedding_head)
        return l2_normalize(self.embedding_head(trunk).float())

    def cluster(self, trunk: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.cluster_head(trunk).float())
        return a / a.sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.trunk(x)
        return self.embed(t), self.cluster(t)

    @contextlib.contextmanager
    def compiled(self, enabled: bool = True):
        """Within the block, the encoder, decoder and heads run through ``torch.compile``.

        The parts are compiled rather than ``self``, because training calls :meth:`trunk`,
        :meth:`embed` and :meth:`cluster`, which a compiled ``forward`` would not cover.
        Leaving the block restores plain modules, which pickle and copy as usual. Yields the
        network itself.
        """
        with compiled_modules(self.parts(), enabled):
            yield self

    def parts(self) -> list[nn.Module]:
        """The encoder, the decoder and the two heads: what :meth:`compiled` compiles."""
        return [self.encoder, self.decoder, self.embedding_head, self.cluster_head]


@contextlib.contextmanager
def compiled_modules(modules, enabled: bool = True):
    """Context manager: within the block, each of ``modules`` runs through ``torch.compile``.

    Parameters
    ----------
    modules : sequence of torch.nn.Module
    enabled : bool, default=True
        False makes the block a no-op.

    Yields
    ------
    list of torch.nn.Module
        The modules; leaving the block restores them as plain modules.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import compiled_modules
    >>> net = torch.nn.Linear(2, 2)
    >>> with compiled_modules([net], enabled=False):
    ...     net(torch.zeros(1, 2)).shape
    torch.Size([1, 2])
    """
    modules = list(modules)
    if enabled:
        for m in modules:
            m.compile()
    try:
        yield modules
    finally:
        if enabled:
            for m in modules:
                m._compiled_call_impl = None  # undoes nn.Module.compile()


class SegmentationUNet(nn.Module):
    """A U-Net for downstream segmentation whose encoder can come from pretraining.

    Parameters
    ----------
    n_classes : int
        Output channels (logits) of the final 1x1 convolution.
    encoder : VGGEncoder, optional
        A pretrained encoder, e.g. ``LocalDiscriminativeEncoder(...).fit(X).export_encoder()``.
        It is used as is (not copied). When None, a randomly initialised encoder is built
        from ``in_channels`` and ``width``.
    in_channels, width
        Only used when ``encoder`` is None.

    Notes
    -----
    ``forward(x)`` maps ``(N, C, H, W)`` (H, W multiples of 16) to logits ``(N, n_classes, H, W)``.

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import SegmentationUNet
    >>> unet = SegmentationUNet(n_classes=3, in_channels=1)   # or encoder=enc.export_encoder()
    >>> unet(torch.zeros(1, 1, 64, 96)).shape                 # logits
    torch.Size([1, 3, 64, 96])
    """

    def __init__(self, n_classes: int, encoder: VGGEncoder | None = None, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        self.encoder = encoder if encoder is not None else VGGEncoder(in_channels, width)
        self.decoder = UNetDecoder(self.encoder.out_channels, self.encoder.width)
        self.classifier = nn.Conv2d(self.decoder.out_channels, n_classes, kernel_size=1)

    def config(self) -> dict:
        """Constructor arguments that rebuild this network's shape before loading a state dict.

        Examples
        --------
        >>> from skuld.nn.network import SegmentationUNet
        >>> SegmentationUNet(n_classes=2, in_channels=1).config()
        {'n_classes': 2, 'in_channels': 1, 'width': 1.0}
        """
        return dict(n_classes=self.classifier.out_channels, in_channels=self.encoder.in_channels,
                    width=self.encoder.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_spatial_size(x)
        return self.classifier(self.decoder(self.encoder(x)))


@contextlib.contextmanager
def _frozen_batch_norm_stats(module: nn.Module):
    """Recomputation must not update BatchNorm running statistics a second time."""
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def _recomputed(fn, x: torch.Tensor, owner: nn.Module | None = None) -> torch.Tensor:
    """``fn(x)`` without stored activations: recomputed during backward (activation checkpointing)."""
    owner = owner if owner is not None else fn
    return checkpoint(
        fn, x, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _frozen_batch_norm_stats(owner)),
    )


def _kaiming_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of a module.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> from skuld.nn.network import count_parameters
    >>> count_parameters(torch.nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
