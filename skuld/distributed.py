"""Several processes, one global batch: gradient-correct gathering and synchronised BatchNorm.

With ``W`` processes (``torch.distributed`` initialised, e.g. by ``torchrun``), each holds a
``1/W`` share of the batch. Patch and region discrimination must see the global batch (every
other process's patches are negatives, region centres average over all images), so their
inputs are gathered across processes with :func:`gather_with_grad`. Every process then
computes the same global loss; the backward of the gather sums the gradient over processes
(``all_reduce``) and keeps this process's slice, so that after DistributedDataParallel
averages parameter gradients, they equal the single-process gradient of the global batch.
(A gather whose backward only keeps the local slice, without the sum, gives gradients W
times too small for those terms: the fault of several public implementations.)
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Number of processes in the ``torch.distributed`` group; 1 when not distributed.

    Returns
    -------
    int

    Examples
    --------
    >>> from skuld.distributed import world_size
    >>> world_size()                                # a plain Python process
    1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the ``torch.distributed`` group; 0 when not distributed.

    Returns
    -------
    int

    Examples
    --------
    >>> from skuld.distributed import rank
    >>> rank()
    0
    """
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all processes along dim 0, differentiably.

    The backward pass sums the incoming gradient over processes (``all_reduce``) and keeps
    this process's slice (see the module docstring for why the sum is needed).

    Parameters
    ----------
    x : Tensor of shape (n, ...)
        The same shape on every process.

    Returns
    -------
    Tensor of shape (W * n, ...)
        Rank r's rows at ``[r * n, (r + 1) * n)``; ``x`` itself when not distributed.

    Examples
    --------
    >>> import torch
    >>> from skuld.distributed import gather_with_grad
    >>> x = torch.ones(2, 3)
    >>> gather_with_grad(x) is x                    # one process: nothing to gather
    True
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch across processes.

    Works on any device and backend (``torch.nn.SyncBatchNorm`` needs GPUs); used for CPU
    (gloo) training. Per-channel sums are gathered with gradients, so backward is exact.
    Outside distributed training it is a plain BatchNorm2d.

    It takes ``torch.nn.BatchNorm2d``'s arguments (``num_features`` = C of the ``(N, C, H, W)``
    input, ``eps``, ``momentum``, ...).

    Examples
    --------
    >>> import torch
    >>> from skuld.distributed import GlobalBatchNorm2d
    >>> bn = GlobalBatchNorm2d(4)                   # one process: exactly BatchNorm2d
    >>> bn(torch.randn(8, 4, 5, 5)).shape
    torch.Size([8, 4, 5, 5])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xf = x.float()
        count = torch.tensor([x.numel() / c], device=x.device, dtype=torch.float32)
        stats = torch.cat([xf.sum(dim=(0, 2, 3)), (xf * xf).sum(dim=(0, 2, 3)), count])
        total = gather_with_grad(stats[None]).sum(0)
        n = total[-1]
        mean = total[:c] / n
        var = total[c : 2 * c] / n - mean * mean
        with torch.no_grad():
            if self.track_running_stats and self.running_mean is not None:
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / max(float(n) - 1, 1.0))
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


@contextlib.contextmanager
def synchronized_batch_norm(module: nn.Module, device: torch.device | None = None):
    """Context manager: within the block, ``module``'s BatchNorm2d layers use global-batch statistics.

    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm2d` elsewhere. The modules
    change class in place, so their parameters stay the very objects an optimizer already
    holds; leaving the block restores plain BatchNorm2d.

    Parameters
    ----------
    module : torch.nn.Module
    device : torch.device, optional
        The training device (CUDA selects SyncBatchNorm).

    Yields
    ------
    torch.nn.Module
        ``module`` itself.

    Examples
    --------
    >>> from torch import nn
    >>> from skuld.distributed import GlobalBatchNorm2d, synchronized_batch_norm
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    >>> with synchronized_batch_norm(net):
    ...     print(type(net[1]).__name__)
    GlobalBatchNorm2d
    >>> type(net[1]).__name__
    'BatchNorm2d'
    """
    swapped = _swap_batch_norm(module, device)
    try:
        yield module
    finally:
        for m in swapped:
            m.__class__ = nn.BatchNorm2d
            m.__dict__.pop("process_group", None)


def _swap_batch_norm(module: nn.Module, device: torch.device | None) -> list[nn.Module]:
    target = nn.SyncBatchNorm if device is not None and device.type == "cuda" else GlobalBatchNorm2d
    swapped = [m for m in module.modules() if type(m) is nn.BatchNorm2d]
    for m in swapped:
        m.__class__ = target
        if target is nn.SyncBatchNorm:
            m.process_group = None
    return swapped


def convert_batch_norm(module: nn.Module, device: torch.device | None = None) -> nn.Module:
    """Switch ``module``'s BatchNorm2d layers to synchronised ones for good.

    :func:`synchronized_batch_norm` does the same for the duration of a block.

    Parameters
    ----------
    module : torch.nn.Module
    device : torch.device, optional
        CUDA selects ``torch.nn.SyncBatchNorm``, anything else :class:`GlobalBatchNorm2d`.

    Returns
    -------
    torch.nn.Module
        ``module`` itself, changed in place.

    Examples
    --------
    >>> from torch import nn
    >>> from skuld.distributed import convert_batch_norm
    >>> type(convert_batch_norm(nn.Sequential(nn.BatchNorm2d(4)))[0]).__name__
    'GlobalBatchNorm2d'
    """
    _swap_batch_norm(module, device)
    return module


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over processes of a per-process tensor, with gradients.

    Parameters
    ----------
    x : Tensor
        The same shape on every process.

    Returns
    -------
    Tensor
        Same shape as ``x``; ``x`` itself when not distributed.

    Examples
    --------
    >>> import torch
    >>> from skuld.distributed import global_mean
    >>> global_mean(torch.tensor([0.25, 0.75]))
    tensor([0.2500, 0.7500])
    """
    if world_size() == 1:
        return x
    return gather_with_grad(x[None]).mean(0)


__all__ = ["GlobalBatchNorm2d", "convert_batch_norm", "synchronized_batch_norm", "gather_with_grad", "global_mean", "rank", "world_size"]
