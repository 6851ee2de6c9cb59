"""Learned conditional distributions q(x | y) for the ILS term's CLUB bound (METHOD.md §4).

Used by the presets ILS_learnL (``neural_laplace``) and ILS_learnN (``neural_gaussian``): one
small UNet per region pair predicts, from the condition image y [N, 3, r, r], a per-element
location μ and log-scale s = tanh(·) ∈ (−1, 1) of x. Pair 0 predicts the invisible background
from the visible foreground; pair 1 the invisible foreground from the visible background.
The estimators are fitted by maximum likelihood in the D-main phase
(:func:`training.loss.estimator_nll`); in the G-main phase they are a frozen critic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch_utils.checkpoint import rebuildable

NUM_PAIRS = 2


def double_conv(in_channels: int, out_channels: int) -> torch.nn.Sequential:
    """Two (conv 3×3, pad 1 → BatchNorm → ReLU): the UNet's building block."""
    layers: list[torch.nn.Module] = []
    for channels in (in_channels, out_channels):
        layers += [torch.nn.Conv2d(channels, out_channels, 3, padding=1),
                   torch.nn.BatchNorm2d(out_channels), torch.nn.ReLU(inplace=True)]
    return torch.nn.Sequential(*layers)


def two_layer_head(channels: int, out_channels: int) -> torch.nn.Sequential:
    """1×1 conv → ReLU → 1×1 conv."""
    return torch.nn.Sequential(torch.nn.Conv2d(channels, channels, 1), torch.nn.ReLU(inplace=True),
                               torch.nn.Conv2d(channels, out_channels, 1))


class EstimatorUNet(torch.nn.Module):
    """y [N, C, r, r] → (μ [N, C, r, r], s [N, C, r, r] in (−1, 1)).

    4 down-sampling levels (2×2 max-pool, then :func:`double_conv`) with ``widths`` (the paper:
    64-128-256-256-256), 4 up-sampling levels (bilinear ×2 with aligned corners, concatenation
    with the skip of the same size, :func:`double_conv`), then the two heads on the last map.
    """

    def __init__(self, widths: list[int], img_channels: int = 3) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f'an estimator UNet needs 5 widths (inc + 4 levels), got {widths}')
        self.inc = double_conv(img_channels, widths[0])
        self.down = torch.nn.ModuleList(double_conv(widths[i], widths[i + 1]) for i in range(4))
        # Up path: level k joins the deeper map with skip widths[3 - k]; outputs widths 2, 1, 0, 0.
        up_out = [widths[2], widths[1], widths[0], widths[0]]
        up_in = [widths[4] + widths[3], up_out[0] + widths[2], up_out[1] + widths[1], up_out[2] + widths[0]]
        self.up = torch.nn.ModuleList(double_conv(i, o) for i, o in zip(up_in, up_out))
        self.mu_head = two_layer_head(widths[0], img_channels)
        self.log_scale_head = two_layer_head(widths[0], img_channels)

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = [self.inc(y)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, scale_factor=2, mode='bilinear', align_corners=True)
            # Odd sizes (never at 64 or 128 px): pad the up-sampled map to the skip's size.
            dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
            if dy or dx:
                x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
            x = block(torch.cat([skip, x], dim=1))
        return self.mu_head(x), torch.tanh(self.log_scale_head(x))


@rebuildable
class MIEstimators(torch.nn.Module):
    """The learned q(x | y) of both region pairs: ``forward(y, pair) -> (mu, log_scale)``.

    ``distribution`` ('neural_laplace' or 'neural_gaussian') says how μ and s are read (a Laplace
    location and log-scale, or a Gaussian mean and log-variance); the networks are the same.
    ``resolution`` is the size at which x and y are compared (64 in every preset).
    """

    def __init__(self, distribution: str = 'neural_laplace', resolution: int = 64,
                 widths: list[int] | tuple[int, ...] = (64, 128, 256, 256, 256), img_channels: int = 3) -> None:
        super().__init__()
        if distribution not in ('neural_laplace', 'neural_gaussian'):
            raise ValueError(f'learned estimators model neural_laplace or neural_gaussian, not {distribution!r}')
        self.distribution = distribution
        self.resolution = resolution
        self.nets = torch.nn.ModuleList(EstimatorUNet(list(widths), img_channels) for _ in range(NUM_PAIRS))

    def forward(self, y: torch.Tensor, pair: int) -> tuple[torch.Tensor, torch.Tensor]:
        """y [N, 3, resolution, resolution] → (μ, s), each [N, 3, resolution, resolution]."""
        return self.nets[pair](y)
