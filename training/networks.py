"""The layered generator, the perturbed composition and the discriminator (METHOD.md §1-§2).

Both generators are StyleGAN2 "skip" generators with equalised learning rate; the discriminator
is the StyleGAN2 residual discriminator with minibatch standard deviation. Everything runs in
float32 on the CPU; on CUDA the highest ``num_fp16_res`` resolutions run in float16.

Shapes: N = batch, R = image resolution, W = w_dim. Images are in [-1, 1] (the generator has no
output nonlinearity, so its colours can leave that range), masks in [0, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils.checkpoint import rebuildable
from torch_utils.ops import bias_act, conv2d_resample, grid_sample_gradfix, upfirdn2d

# The [1, 3, 3, 1] FIR filter of StyleGAN2's up- and downsampling.
RESAMPLE_FILTER = [1, 3, 3, 1]
NOISE_MODES = ('random', 'const', 'none')


def block_channels(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at one resolution: min(channel_base / r, channel_max) (ORIGINAL.md §2.3)."""
    return min(channel_base // resolution, channel_max)


def fp16_min_resolution(img_resolution: int, num_fp16_res: int) -> int:
    """Lowest resolution that runs in float16: the ``num_fp16_res`` highest ones, never below 8."""
    return max(2 ** (int(np.log2(img_resolution)) + 1 - num_fp16_res), 8)


def compute_dtype(use_fp16: bool, device: torch.device) -> torch.dtype:
    """float16 only for fp16 layers on CUDA; the CPU always computes in float32."""
    return torch.float16 if use_fp16 and device.type == 'cuda' else torch.float32


def _check_resolution(img_resolution: int) -> None:
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f'img_resolution must be a power of two >= 4, got {img_resolution}')


# ----------------------------------------------------------------------------------------------
# Equalised-learning-rate layers.

@rebuildable
class EqualizedLinear(torch.nn.Module):
    """Fully connected layer with equalised learning rate.

    The weight is stored as N(0, 1) / lr_mul and scaled at run time by lr_mul / sqrt(in_features),
    so that Adam's per-parameter step has the same relative size for every layer; the bias is
    stored as bias_init / lr_mul and scaled by lr_mul.
    """

    def __init__(self, in_features: int, out_features: int, activation: str = 'linear',
                 lr_mul: float = 1.0, bias_init: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_mul)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, in_features] -> [N, out_features]."""
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain if self.bias is not None else None
        if self.activation == 'linear' and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act.bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f'in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}'


@rebuildable
class EqualizedConv2d(torch.nn.Module):
    """k x k convolution with equalised learning rate, optional FIR down/upsampling, bias,
    activation and clamping of the output to +-conv_clamp (the discriminator's layers).
    ``trainable=False`` (Freeze-D) holds weight and bias as buffers."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, activation: str = 'linear',
                 bias: bool = True, up: int = 1, down: int = 1, conv_clamp: float | None = None,
                 trainable: bool = True) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.down = down
        self.padding = kernel_size // 2
        self.conv_clamp = conv_clamp
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias_value = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_value) if bias else None
        else:
            # Freeze-D: buffers are outside parameters(), so no optimiser or requires_grad_ reaches
            # them; the state-dict keys stay those of a trainable layer.
            self.register_buffer('weight', weight)
            self.register_buffer('bias', bias_value)
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(RESAMPLE_FILTER))

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        """[N, in_channels, H, W] -> [N, out_channels, H * up / down, W * up / down]."""
        w = (self.weight * self.weight_gain).to(x.dtype)
        f = self.resample_filter if (self.up > 1 or self.down > 1) else None
        # A flipped kernel saves one flip in the transposed convolution of the upsampling path.
        x = conv2d_resample.conv2d_resample(x, w, f=f, up=self.up, down=self.down, padding=self.padding,
                                            flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=gain * _act_gain(self.activation), clamp=clamp)

    def extra_repr(self) -> str:
        return (f'in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, '
                f'up={self.up}, down={self.down}, conv_clamp={self.conv_clamp}')


def _act_gain(activation: str) -> float:
    """bias_act's default gain for an activation (sqrt 2 for lrelu/relu, 1 otherwise)."""
    return math.sqrt(2) if activation in ('relu', 'lrelu') else 1.0


# ----------------------------------------------------------------------------------------------
# Mapping network.

def normalize_z(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-sample second-moment normalisation of the latent: z / sqrt(mean(z^2) + eps)."""
    return z * (z.square().mean(dim=1, keepdim=True) + eps).rsqrt()


@rebuildable
class MappingNetwork(torch.nn.Module):
    """z [N, z_dim] -> ws [N, num_ws, w_dim]: normalised z through ``num_layers`` lrelu FC layers
    (lr multiplier 0.01), tracked average w for truncation, broadcast to ``num_ws`` copies."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8, lr_mul: float = 0.01,
                 w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        self.layers = torch.nn.ModuleList(
            EqualizedLinear(fan_in, fan_out, activation='lrelu', lr_mul=lr_mul)
            for fan_in, fan_out in zip(features[:-1], features[1:]))
        self.register_buffer('w_avg', torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0, update_w_avg: bool = True) -> torch.Tensor:
        """z [N, z_dim] (any scale) -> ws [N, num_ws, w_dim]; in training mode also moves w_avg
        towards the batch mean (beta 0.995) unless ``update_w_avg`` is False (the style-mixing
        pass). psi < 1 pulls every w towards w_avg."""
        x = normalize_z(z.to(torch.float32))
        for layer in self.layers:
            x = layer(x)
        if self.training and update_w_avg and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)


# ----------------------------------------------------------------------------------------------
# Synthesis network.

def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     fused: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """StyleGAN2 modulated convolution.

    x [N, C_in, H, W], weight [C_out, C_in, k, k], styles [N, C_in] -> [N, C_out, H*up, W*up].
    The effective per-sample kernel is weight * styles (per input channel), divided, if
    ``demodulate``, by its L2 norm per output channel (+ eps). ``fused`` runs one grouped
    convolution with per-sample kernels; otherwise x is scaled by the styles, convolved with the
    shared kernel and rescaled, which is faster for large training batches. Both are the same
    function up to rounding.
    """
    batch, in_channels = styles.shape
    out_channels, _, kh, kw = weight.shape
    weight = weight.to(torch.float32)
    styles = styles.to(torch.float32)
    if demodulate:
        # Demodulation is invariant to a positive scale of the kernel per output channel and of
        # the styles per sample; normalising both keeps float16 activations far from overflow.
        weight = weight / weight.abs().amax(dim=[1, 2, 3], keepdim=True).clamp_min(eps)
        styles = styles / styles.abs().amax(dim=1, keepdim=True).clamp_min(eps)
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + eps).rsqrt()  # [N, C_out]
    flip_weight = up == 1
    if fused:
        kernels = weight.unsqueeze(0) * styles[:, None, :, None, None]
        if demodulate:
            kernels = kernels * dcoefs[:, :, None, None, None]
        kernels = kernels.reshape(batch * out_channels, in_channels, kh, kw).to(x.dtype)
        y = conv2d_resample.conv2d_resample(x.reshape(1, batch * in_channels, *x.shape[2:]), kernels,
                                            f=resample_filter, up=up, padding=padding, groups=batch,
                                            flip_weight=flip_weight)
        return y.reshape(batch, out_channels, *y.shape[2:])
    x = x * styles.to(x.dtype)[:, :, None, None]
    y = conv2d_resample.conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                                        flip_weight=flip_weight)
    if demodulate:
        y = y * dcoefs.to(y.dtype)[:, :, None, None]
    return y


@rebuildable
class SynthesisLayer(torch.nn.Module):
    """Modulated, demodulated 3x3 convolution (optionally upsampling x2) + per-pixel noise +
    bias + lrelu * sqrt 2 + clamp: [N, C_in, r/up, r/up] -> [N, C_out, r, r]."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: int = 1,
                 conv_clamp: float | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        self.resolution = resolution
        self.up = up
        self.padding = kernel_size // 2
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.register_buffer('noise_const', torch.randn([resolution, resolution]))
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(RESAMPLE_FILTER))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = 'random', fused: bool = True) -> torch.Tensor:
        """x [N, C_in, H, W], w [N, w_dim] -> [N, C_out, resolution, resolution]."""
        # The equalised-LR gain of the kernel is omitted: demodulation cancels any constant scale.
        styles = self.affine(w)
        x = modulated_conv2d(x, self.weight, styles, demodulate=True, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter if self.up > 1 else None, fused=fused)
        if noise_mode == 'random':
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            x = x + (noise * self.noise_strength).to(x.dtype)
        elif noise_mode == 'const':
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        return bias_act.bias_act(x, self.bias.to(x.dtype), act='lrelu', clamp=self.conv_clamp)


@rebuildable
class ToRGBLayer(torch.nn.Module):
    """1x1 modulated convolution without demodulation, style gain 1/sqrt(C_in), bias, clamp:
    [N, C_in, r, r] -> [N, img_channels, r, r]."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = EqualizedLinear(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


@rebuildable
class SynthesisBlock(torch.nn.Module):
    """One resolution r of the skip generator.

    r = 4: learned constant [C, 4, 4] -> conv. r > 4: conv with x2 upsampling -> conv. Then ToRGB;
    the running image from the previous block is upsampled x2 with the FIR filter and added.
    Consumes ``num_conv + 1`` w vectors; the last one (ToRGB) is shared with the next block's
    first conv (ORIGINAL.md §2.3).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 use_fp16: bool = False, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.resolution = resolution
        self.use_fp16 = use_fp16
        self.is_first = in_channels == 0
        if self.is_first:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
            self.convs = torch.nn.ModuleList([
                SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)])
        else:
            self.convs = torch.nn.ModuleList([
                SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp),
                SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)])
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = len(self.convs)
        self.register_buffer('resample_filter', upfirdn2d.setup_filter(RESAMPLE_FILTER))

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                noise_mode: str = 'random') -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, C_in, r/2, r/2] (None at r = 4), img [N, img_channels, r/2, r/2] float32 (None at
        r = 4), ws [N, num_conv + 1, w_dim] -> (x [N, C_out, r, r], img [N, img_channels, r, r])."""
        dtype = compute_dtype(self.use_fp16, ws.device)
        # Grouped (fused) convolutions are the fast path for inference; float16 grouped kernels
        # with many samples are slow, and training batches favour one shared kernel.
        fused = (not self.training) and (dtype == torch.float32 or ws.shape[0] == 1)
        if self.is_first:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
        else:
            x = x.to(dtype)
        for i, conv in enumerate(self.convs):
            x = conv(x, ws[:, i], noise_mode=noise_mode, fused=fused)
        if img is not None:
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        y = self.torgb(x, ws[:, self.num_conv], fused=fused).to(torch.float32)
        img = y if img is None else img + y
        return x, img


@rebuildable
class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> image [N, img_channels, R, R] float32 (StyleGAN2 skip generator)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 16384,
                 channel_max: int = 256, num_fp16_res: int = 4, conv_clamp: float | None = 256) -> None:
        super().__init__()
        _check_resolution(img_resolution)
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]
        fp16_from = fp16_min_resolution(img_resolution, num_fp16_res)
        blocks = []
        for res in self.block_resolutions:
            in_channels = block_channels(res // 2, channel_base, channel_max) if res > 4 else 0
            blocks.append(SynthesisBlock(in_channels, block_channels(res, channel_base, channel_max), w_dim, res,
                                         img_channels, use_fp16=res >= fp16_from, conv_clamp=conv_clamp))
        self.blocks = torch.nn.ModuleList(blocks)
        # Each block reads num_conv + 1 ws; the +1 is shared with the next block, so only the
        # last block's ToRGB adds one: 10 at R = 64, 12 at R = 128.
        self.num_ws = sum(block.num_conv for block in self.blocks) + 1

    def forward(self, ws: torch.Tensor, noise_mode: str = 'random') -> torch.Tensor:
        if noise_mode not in NOISE_MODES:
            raise ValueError(f'noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}')
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f'expected ws of shape [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}')
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + 1], noise_mode=noise_mode)
            w_idx += block.num_conv
        return img


# ----------------------------------------------------------------------------------------------
# The layered generator.

def compose(fg: torch.Tensor, mask: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """x = m * f + (1 - m) * b (METHOD.md §1). fg, bg [N, 3, R, R], mask [N, 1, R, R] in [0, 1]."""
    return mask * fg + (1 - mask) * bg


@rebuildable
class LayeredGenerator(torch.nn.Module):
    """Two StyleGAN2 generators sharing one z (METHOD.md §1).

    Background: mapping_bg + synthesis_bg (3 channels). Foreground: mapping_fg + synthesis_fg
    (4 channels; the fourth is the mask logit). Both mapping networks receive the same z.

    Presets: z_dim = w_dim = 512, channel_base 16384, channel_max 256, mapping_layers 8,
    num_fp16_res 4, conv_clamp 256 (``--fp32``: num_fp16_res 0, conv_clamp None). Narrow CPU
    networks, e.g. channel_base 2048, channel_max 64, mapping_layers 2, z_dim = w_dim = 64.
    ``num_ws`` (w vectors per synthesis network) is 10 at R = 64 and 12 at R = 128.

    ``placement_max`` > 0 (not in the paper; 0 in every preset) adds a placement head: a linear map of
    the foreground's first w to a translation tanh(.) * placement_max of the image width in x and y,
    applied to fg and mask together (bilinear, zero outside) before composition, so that where the
    object sits is a function of the latent that D's gradient reaches directly (issue 22).
    """

    def __init__(self, img_resolution: int = 64, z_dim: int = 512, w_dim: int = 512, channel_base: int = 16384,
                 channel_max: int = 256, mapping_layers: int = 8, num_fp16_res: int = 4,
                 conv_clamp: float | None = 256, mapping_lr_mul: float = 0.01, w_avg_beta: float = 0.995,
                 img_channels: int = 3, placement_max: float = 0.0) -> None:
        super().__init__()
        if placement_max < 0:
            raise ValueError('placement_max must be >= 0')
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.c_dim = 0
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        synthesis_kwargs = dict(w_dim=w_dim, img_resolution=img_resolution, channel_base=channel_base,
                                channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp)
        self.synthesis_bg = SynthesisNetwork(img_channels=img_channels, **synthesis_kwargs)
        self.synthesis_fg = SynthesisNetwork(img_channels=img_channels + 1, **synthesis_kwargs)
        self.num_ws = self.synthesis_bg.num_ws
        mapping_kwargs = dict(z_dim=z_dim, w_dim=w_dim, num_ws=self.num_ws, num_layers=mapping_layers,
                              lr_mul=mapping_lr_mul, w_avg_beta=w_avg_beta)
        self.mapping_bg = MappingNetwork(**mapping_kwargs)
        self.mapping_fg = MappingNetwork(**mapping_kwargs)
        self.placement_max = float(placement_max)
        self.placement = EqualizedLinear(w_dim, 2) if placement_max > 0 else None

    def place(self, fg: torch.Tensor, mask: torch.Tensor, w_fg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Translate fg [N,3,R,R] and mask [N,1,R,R] by the placement head's reading of w_fg [N, w_dim]:
        up to placement_max of the width each way; the uncovered area is 0 in both."""
        # affine_warp's grid spans 2 units per image width; it samples at p + t, so the object moves by -t.
        translate = torch.tanh(self.placement(w_fg.float())) * (2 * self.placement_max)
        placed = affine_warp(torch.cat([fg, mask], dim=1), translate, None, None)
        return placed[:, :fg.shape[1]], placed[:, fg.shape[1]:]

    def mapping(self, z: torch.Tensor, truncation_psi: float = 1.0,
                update_w_avg: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """z [N, z_dim] -> (ws_bg, ws_fg), each [N, num_ws, w_dim]; the same z feeds both."""
        return (self.mapping_bg(z, truncation_psi, update_w_avg=update_w_avg),
                self.mapping_fg(z, truncation_psi, update_w_avg=update_w_avg))

    def synthesis(self, ws_bg: torch.Tensor, ws_fg: torch.Tensor,
                  noise_mode: str = 'random') -> dict[str, torch.Tensor]:
        """(ws_bg, ws_fg) -> dict(bg [N,3,R,R], fg [N,3,R,R], mask [N,1,R,R] in [0,1], img [N,3,R,R])."""
        bg = self.synthesis_bg(ws_bg, noise_mode=noise_mode)
        fg_and_logit = self.synthesis_fg(ws_fg, noise_mode=noise_mode)
        fg = fg_and_logit[:, :self.img_channels]
        mask = torch.sigmoid(fg_and_logit[:, self.img_channels:])
        if self.placement is not None:
            fg, mask = self.place(fg, mask, ws_fg[:, 0])
        return dict(bg=bg, fg=fg, mask=mask, img=compose(fg, mask, bg))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                noise_mode: str = 'random') -> dict[str, torch.Tensor]:
        """z [N, z_dim] ~ N(0, I) -> dict(bg, fg [N, 3, R, R] float32, roughly [-1, 1] but
        unbounded; mask [N, 1, R, R] in [0, 1]; img = mask * fg + (1 - mask) * bg)."""
        ws_bg, ws_fg = self.mapping(z, truncation_psi)
        return self.synthesis(ws_bg, ws_fg, noise_mode=noise_mode)


# ----------------------------------------------------------------------------------------------
# Perturbed composition.

def sample_eps(n: int, eps_dim: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Perturbation draws: [n, eps_dim] uniform in [-1, 1]."""
    device = generator.device if generator is not None and device is None else device
    return torch.rand([n, eps_dim], device=device, generator=generator) * 2 - 1


def integer_shift(x: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Translate each sample by whole pixels with zero fill.

    x [N, C, H, W], tx, ty [N] integers -> [N, C, H, W] where output (y, x) = input (y - ty, x - tx)
    and pixels without a source are 0. Two gathers, differentiable w.r.t. x.
    """
    batch, channels, height, width = x.shape
    src_y = torch.arange(height, device=x.device).unsqueeze(0) - ty.to(x.device, torch.long).unsqueeze(1)  # [N, H]
    src_x = torch.arange(width, device=x.device).unsqueeze(0) - tx.to(x.device, torch.long).unsqueeze(1)  # [N, W]
    rows = src_y.clamp(0, height - 1)[:, None, :, None].expand(batch, channels, height, width)
    cols = src_x.clamp(0, width - 1)[:, None, None, :].expand(batch, channels, height, width)
    shifted = x.gather(2, rows).gather(3, cols)
    valid = ((src_y >= 0) & (src_y < height))[:, :, None] & ((src_x >= 0) & (src_x < width))[:, None, :]
    return shifted.masked_fill(~valid.unsqueeze(1), 0)


def contrast_jitter(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per sample and channel: clip((x - mean) * factor + mean, min, max), statistics over the
    image. x [N, C, H, W], factor [N] -> [N, C, H, W]."""
    mean = x.mean(dim=[2, 3], keepdim=True)
    low = x.amin(dim=[2, 3], keepdim=True)
    high = x.amax(dim=[2, 3], keepdim=True)
    y = (x - mean) * factor.reshape(-1, 1, 1, 1) + mean
    return torch.maximum(torch.minimum(y, high), low)


def affine_warp(x: torch.Tensor, translate: torch.Tensor | None, angle: torch.Tensor | None,
                log2_scale: torch.Tensor | None) -> torch.Tensor:
    """Bilinear, zero-padded warp of x [N, C, H, W] with the sampling matrix
    translate(t, in [-1, 1] grid units) . rotate(angle, radians) . scale(2^log2_scale).
    translate [N, 2], angle [N], log2_scale [N] (None = identity). Twice differentiable."""
    batch = x.shape[0]
    matrix = torch.eye(3, device=x.device).repeat(batch, 1, 1)
    if translate is not None:
        t = torch.eye(3, device=x.device).repeat(batch, 1, 1)
        t[:, :2, 2] = translate
        matrix = matrix @ t
    if angle is not None:
        r = torch.eye(3, device=x.device).repeat(batch, 1, 1)
        cos, sin = torch.cos(angle), torch.sin(angle)
        r[:, 0, 0], r[:, 0, 1], r[:, 1, 0], r[:, 1, 1] = cos, -sin, sin, cos
        matrix = matrix @ r
    if log2_scale is not None:
        s = torch.eye(3, device=x.device).repeat(batch, 1, 1)
        scale = torch.exp2(log2_scale)
        s[:, 0, 0], s[:, 1, 1] = scale, scale
        matrix = matrix @ s
    grid = F.affine_grid(matrix[:, :2, :].to(x.dtype), list(x.shape), align_corners=False)
    return grid_sample_gradfix.grid_sample(x, grid)


@rebuildable
class PerturbedComposition(torch.nn.Module):
    """Random perturbation of the layers before composition (METHOD.md §1, ORIGINAL.md §2.5).

    Presets use only the integer shift (xint_max = 0.125): fg and mask move together by
    round(eps * xint_max * W) pixels in x and y, the uncovered area is zero, bg stays. The other
    options are off (0) in every preset: bg_contrast jitters the contrast of bg by a factor
    1 + eps * bg_contrast; xfrac_max / rotate_max (degrees) / scale_max (log2) build an affine
    warp of fg and mask, which excludes the integer shift.

    eps layout (``eps_dim`` columns): [contrast] [xint x, xint y] [xfrac x, xfrac y] [rotate] [scale],
    each present only if its option is > 0.
    """

    def __init__(self, xint_max: float = 0.125, bg_contrast: float = 0.0, scale_max: float = 0.0,
                 rotate_max: float = 0.0, xfrac_max: float = 0.0) -> None:
        super().__init__()
        if min(xint_max, bg_contrast, scale_max, rotate_max, xfrac_max) < 0:
            raise ValueError('perturbation magnitudes must be >= 0')
        self.xint_max = float(xint_max)
        self.bg_contrast = float(bg_contrast)
        self.scale_max = float(scale_max)
        self.rotate_max = float(rotate_max)
        self.xfrac_max = float(xfrac_max)
        self.use_affine = max(scale_max, rotate_max, xfrac_max) > 0
        if self.use_affine and xint_max > 0:
            raise ValueError('the integer shift (xint_max) and the affine warp (xfrac_max, rotate_max, '
                             'scale_max) are mutually exclusive; set one of them to 0')
        self.eps_dim = (int(bg_contrast > 0) + 2 * int(xint_max > 0) + 2 * int(xfrac_max > 0)
                        + int(rotate_max > 0) + int(scale_max > 0))

    def forward(self, layers: dict[str, torch.Tensor], eps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """layers: dict(bg [N,3,R,R], fg [N,3,R,R], mask [N,1,R,R]); eps [N, eps_dim] in [-1, 1]
        (drawn here if None) -> dict(bg, fg, mask, img) of the same shapes, img recomposed."""
        bg, fg, mask = layers['bg'], layers['fg'], layers['mask']
        batch, _, _, width = fg.shape
        if eps is None:
            eps = sample_eps(batch, self.eps_dim, device=fg.device)
        if eps.shape != (batch, self.eps_dim):
            raise ValueError(f'expected eps of shape [{batch}, {self.eps_dim}], got {list(eps.shape)}')
        eps = eps.to(device=fg.device, dtype=torch.float32)
        col = 0
        if self.bg_contrast > 0:
            bg = contrast_jitter(bg, 1 + eps[:, col] * self.bg_contrast)
            col += 1
        fg_and_mask = torch.cat([fg, mask], dim=1)
        if self.xint_max > 0:
            # Both components scale with the width, as in the original (same for square images).
            shift = torch.round(eps[:, col:col + 2] * self.xint_max * width).to(torch.long)
            fg_and_mask = integer_shift(fg_and_mask, shift[:, 0], shift[:, 1])
            col += 2
        if self.use_affine:
            translate = angle = log2_scale = None
            if self.xfrac_max > 0:
                translate = eps[:, col:col + 2] * self.xfrac_max
                col += 2
            if self.rotate_max > 0:
                angle = eps[:, col] * (math.pi * self.rotate_max / 180)
                col += 1
            if self.scale_max > 0:
                log2_scale = eps[:, col] * self.scale_max
                col += 1
            fg_and_mask = affine_warp(fg_and_mask, translate, angle, log2_scale)
        fg, mask = fg_and_mask[:, :fg.shape[1]], fg_and_mask[:, fg.shape[1]:]
        return dict(bg=bg, fg=fg, mask=mask, img=compose(fg, mask, bg))

    def extra_repr(self) -> str:
        return (f'xint_max={self.xint_max}, bg_contrast={self.bg_contrast}, scale_max={self.scale_max}, '
                f'rotate_max={self.rotate_max}, xfrac_max={self.xfrac_max}, eps_dim={self.eps_dim}')


# ----------------------------------------------------------------------------------------------
# Discriminator.

def minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Append the minibatch standard deviation as extra feature maps.

    x [N, C, H, W] -> [N, C + num_channels, H, W]. Groups of G = min(group_size, N) samples are
    taken with stride N / G (sample n is in group n mod (N / G)); the C channels are split into
    ``num_channels`` parts and each extra channel holds, for every member of a group, the mean
    over (part channels, H, W) of sqrt(var over the group + eps). N must be a multiple of G.
    """
    batch, channels, height, width = x.shape
    group = min(group_size, batch)
    if batch % group != 0:
        raise ValueError(f'minibatch stddev: batch size {batch} is not a multiple of the group size {group} '
                         f'(mbstd group {group_size}); use a batch size divisible by it')
    if channels % num_channels != 0:
        raise ValueError(f'minibatch stddev: {channels} channels do not split into {num_channels} parts')
    y = x.to(torch.float32).reshape(group, batch // group, num_channels, channels // num_channels, height, width)
    std = (y.var(dim=0, unbiased=False) + eps).sqrt()  # [N/G, F, C/F, H, W]
    feature = std.mean(dim=[2, 3, 4])  # [N/G, F]
    feature = feature.reshape(batch // group, num_channels, 1, 1).repeat(group, 1, height, width)
    return torch.cat([x, feature.to(x.dtype)], dim=1)


@rebuildable
class DiscriminatorBlock(torch.nn.Module):
    """Residual block at resolution r: [fromRGB] -> conv 3x3 -> conv 3x3 with x2 downsampling,
    plus a 1x1 downsampling skip; both branches scaled by sqrt 0.5 (METHOD.md §2).
    [N, C_tmp, r, r] (or the image [N, img_channels, r, r] in the first block) -> [N, C_out, r/2, r/2]."""

    def __init__(self, tmp_channels: int, out_channels: int, img_channels: int, first: bool = False,
                 use_fp16: bool = False, conv_clamp: float | None = None, first_layer_index: int = 0,
                 freeze_layers: int = 0) -> None:
        super().__init__()
        self.use_fp16 = use_fp16
        # Freeze-D counts layers from the input: [fromrgb,] conv0, conv1, skip, then the next block.
        trainable = iter(index >= freeze_layers for index in range(first_layer_index, first_layer_index + 4))
        self.fromrgb = (EqualizedConv2d(img_channels, tmp_channels, 1, activation='lrelu', conv_clamp=conv_clamp,
                                        trainable=next(trainable)) if first else None)
        self.conv0 = EqualizedConv2d(tmp_channels, tmp_channels, 3, activation='lrelu', conv_clamp=conv_clamp,
                                     trainable=next(trainable))
        self.conv1 = EqualizedConv2d(tmp_channels, out_channels, 3, activation='lrelu', down=2, conv_clamp=conv_clamp,
                                     trainable=next(trainable))
        self.skip = EqualizedConv2d(tmp_channels, out_channels, 1, bias=False, down=2, trainable=next(trainable))
        self.num_layers = 4 if first else 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(compute_dtype(self.use_fp16, x.device))
        if self.fromrgb is not None:
            x = self.fromrgb(x)
        gain = math.sqrt(0.5)
        return self.skip(x, gain=gain) + self.conv1(self.conv0(x), gain=gain)


@rebuildable
class DiscriminatorEpilogue(torch.nn.Module):
    """At 4x4: minibatch stddev -> conv 3x3 (C + F -> C) -> FC (16 C -> C, lrelu) -> FC (C -> 1).
    [N, C, 4, 4] -> [N, 1] logits."""

    def __init__(self, in_channels: int, resolution: int = 4, mbstd_group_size: int = 4,
                 mbstd_num_channels: int = 1, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.mbstd_group_size = mbstd_group_size
        self.mbstd_num_channels = mbstd_num_channels
        self.conv = EqualizedConv2d(in_channels + mbstd_num_channels, in_channels, 3, activation='lrelu',
                                    conv_clamp=conv_clamp)
        self.fc = EqualizedLinear(in_channels * resolution ** 2, in_channels, activation='lrelu')
        self.out = EqualizedLinear(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.mbstd_num_channels > 0:
            x = minibatch_stddev(x, self.mbstd_group_size, self.mbstd_num_channels)
        x = self.conv(x)
        return self.out(self.fc(x.flatten(1)))


@rebuildable
class Discriminator(torch.nn.Module):
    """StyleGAN2 residual discriminator, unconditional: img [N, 3, R, R] in [-1, 1] -> logits [N, 1].

    ``freeze_layers`` (Freeze-D, ``--freezed``): the first k convolution layers counted from the
    input (first block: fromRGB, conv0, conv1, skip; each later block: conv0, conv1, skip) keep
    their weights; the epilogue always trains.
    """

    def __init__(self, img_resolution: int = 64, img_channels: int = 3, channel_base: int = 16384,
                 channel_max: int = 256, num_fp16_res: int = 4, conv_clamp: float | None = 256,
                 mbstd_group_size: int = 4, mbstd_num_channels: int = 1, freeze_layers: int = 0) -> None:
        super().__init__()
        _check_resolution(img_resolution)
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.c_dim = 0
        self.block_resolutions = [2 ** i for i in range(int(np.log2(img_resolution)), 2, -1)]
        fp16_from = fp16_min_resolution(img_resolution, num_fp16_res)
        blocks = []
        layer_index = 0
        for res in self.block_resolutions:
            blocks.append(DiscriminatorBlock(
                tmp_channels=block_channels(res, channel_base, channel_max),
                out_channels=block_channels(res // 2, channel_base, channel_max),
                img_channels=img_channels, first=res == img_resolution, use_fp16=res >= fp16_from,
                conv_clamp=conv_clamp, first_layer_index=layer_index, freeze_layers=freeze_layers))
            layer_index += blocks[-1].num_layers
        self.blocks = torch.nn.ModuleList(blocks)
        self.epilogue = DiscriminatorEpilogue(block_channels(4, channel_base, channel_max), resolution=4,
                                              mbstd_group_size=mbstd_group_size,
                                              mbstd_num_channels=mbstd_num_channels, conv_clamp=conv_clamp)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, img_channels, R, R] in [-1, 1] -> [N, 1] float32 logits (real > 0)."""
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(f'expected images of shape [N, {self.img_channels}, {self.img_resolution}, '
                             f'{self.img_resolution}], got {list(img.shape)}')
        x = img
        for block in self.blocks:
            x = block(x)
        return self.epilogue(x)


# ----------------------------------------------------------------------------------------------
# Sizes from the arguments, before building (torch_utils.memory): a width in a snapshot record or
# an option is checked against the machine's memory without allocating the network. Exact counts
# of parameters and buffers, pinned to the built networks by tests/test_reliability.py.

def _linear_size(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def _synthesis_size(w_dim: int, img_resolution: int, img_channels: int, channel_base: int, channel_max: int) -> int:
    filter_taps = len(RESAMPLE_FILTER) ** 2

    def layer(c_in: int, c_out: int, res: int) -> int:   # affine, 3x3 weight, bias, noise strength + const
        return _linear_size(w_dim, c_in) + 9 * c_in * c_out + c_out + 1 + res * res + filter_taps

    total = 0
    for res in (2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)):
        c = block_channels(res, channel_base, channel_max)
        if res == 4:
            total += c * 16 + layer(c, c, 4)
        else:
            total += layer(block_channels(res // 2, channel_base, channel_max), c, res) + layer(c, c, res)
        total += _linear_size(w_dim, c) + c * img_channels + img_channels + filter_taps   # ToRGB, block filter
    return total


def generator_parameters(img_resolution: int = 64, z_dim: int = 512, w_dim: int = 512, channel_base: int = 16384,
                         channel_max: int = 256, mapping_layers: int = 8, img_channels: int = 3,
                         placement_max: float = 0.0, **unused: object) -> int:
    """Parameters + buffers of ``LayeredGenerator(**kwargs)``, counted from its arguments."""
    mapping = sum(_linear_size(a, b) for a, b in zip([z_dim] + [w_dim] * (mapping_layers - 1),
                                                       [w_dim] * mapping_layers)) + w_dim
    synthesis = sum(_synthesis_size(w_dim, img_resolution, c, channel_base, channel_max)
                    for c in (img_channels, img_channels + 1))
    placement = _linear_size(w_dim, 2) if placement_max > 0 else 0
    return 2 * mapping + synthesis + placement


def discriminator_parameters(img_resolution: int = 64, img_channels: int = 3, channel_base: int = 16384,
                             channel_max: int = 256, mbstd_num_channels: int = 1, **unused: object) -> int:
    """Parameters + buffers of ``Discriminator(**kwargs)``, counted from its arguments."""
    filter_taps = len(RESAMPLE_FILTER) ** 2

    def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
        return c_out * c_in * k * k + (c_out if bias else 0) + filter_taps

    total = 0
    for res in (2 ** i for i in range(int(np.log2(img_resolution)), 2, -1)):
        tmp, out = block_channels(res, channel_base, channel_max), block_channels(res // 2, channel_base, channel_max)
        total += (conv(img_channels, tmp, 1) if res == img_resolution else 0)
        total += conv(tmp, tmp, 3) + conv(tmp, out, 3) + conv(tmp, out, 1, bias=False)
    c = block_channels(4, channel_base, channel_max)
    return total + conv(c + mbstd_num_channels, c, 3) + _linear_size(c * 16, c) + _linear_size(c, 1)


def activation_floats(img_resolution: int, channel_base: int, channel_max: int, **unused: object) -> int:
    """Floats of the feature maps one sample makes in one pass of G (both synthesis networks, two
    convolutions per resolution) and D (three per resolution): the part of the memory that grows
    with the batch. A training step keeps several tensors per feature map for the backward pass."""
    resolutions = [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]
    maps = sum(block_channels(res, channel_base, channel_max) * res * res for res in resolutions)
    return 2 * 2 * maps + 3 * maps


# A record of these classes is sized before it is built (torch_utils.checkpoint.build_module).
LayeredGenerator.parameter_count = staticmethod(generator_parameters)
Discriminator.parameter_count = staticmethod(discriminator_parameters)
