"""The arithmetic of ILSGAN's objective (METHOD.md §3-§4), one small function per term.

Terms (each pure: tensors in, tensor out):

* :func:`generator_adversarial_loss`, :func:`discriminator_adversarial_loss` — non-saturating logistic;
* :func:`mask_binarization_loss`, :func:`min_mask_size_loss` — on the shifted mask;
* :func:`valid_range_gate`, :func:`ils_regions`, :func:`club_bound`, :func:`ils_l1_distance`,
  :func:`ils_sigma` — the ILS term on the unshifted layers;
* :func:`estimator_nll` — maximum-likelihood fit of the learned q(x | y);
* :func:`r1_penalty` — the gradient penalty on reals;
* :func:`path_lengths` — the path-length regulariser's ‖J_wᵀ y‖ (off in every preset);
* :func:`mixing_cutoffs` — where the second latent's ws take over when styles are mixed.

:class:`ILSLoss` runs the phases of an iteration that have work to do (G-main, G-reg only with a
path-length weight, D-main with the estimators' fit, D-reg); each phase computes its losses,
reports them to :mod:`torch_utils.training_stats` and calls ``backward``. Which network each term
updates is decided by which parameters have ``requires_grad`` (the loop's job) and by the detaches
below.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from torch_utils import training_stats
from torch_utils.ops import conv2d_gradfix


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or ±inf: training stops (the last good snapshot stays the latest)."""


# ----------------------------------------------------------------------------------------------
# Adversarial and mask terms (METHOD §3).

def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(−D(x̃)): logits [N, 1] → [N]."""
    return F.softplus(-fake_logits).flatten()


def discriminator_adversarial_loss(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(softplus(D(x̃_fake)), softplus(−D(x_real))): logits [N, 1] → two [N]."""
    return F.softplus(fake_logits).flatten(), F.softplus(-real_logits).flatten()


def mask_binarization_loss(mask: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of min(m, 1 − m): mask [N, 1, H, W] in [0, 1] → [N] in [0, 0.5]."""
    return torch.minimum(mask, 1 - mask).flatten(1).mean(dim=1)


def min_mask_size_loss(mask: torch.Tensor, min_size: float = 0.25, max_size: float | None = None,
                       floor_on_batch: bool = False) -> torch.Tensor:
    """relu(min_size − mean(m)) [+ relu(mean(m) − max_size)]: mask [N, 1, H, W] → [N].

    One-sided in the paper's presets (the shift already punishes a full mask). ``max_size``
    adds the upper side; with max_size = 1 − min_size it is the original's form for runs
    without the shift. The CPU demo preset uses it so that a mask saturated to 1 early, before
    D has learnt to see seams, is pulled back at once. ``floor_on_batch`` (not in the paper)
    applies the lower side to the batch's mean area, the same value for every sample: one mask
    may then be smaller than min_size if others are larger (objects of 10 % beside ones of 50 %).
    """
    area = mask.flatten(1).mean(dim=1)
    loss = F.relu(min_size - (area.mean().expand_as(area) if floor_on_batch else area))
    if max_size is not None:
        loss = loss + F.relu(area - max_size)
    return loss


def soft_border_coverage(mask: torch.Tensor) -> torch.Tensor:
    """Mean of the mask over the image's outer ring: mask [N, 1, H, W] in [0, 1] → [N] in [0, 1].

    The ring is max(1, H // 16) pixels wide (2 at 32 px). A mask that draws the ground, the sky or a
    frame round the image covers half of it or more; an object, even one cut by the border, little.
    Soft and differentiable, for a loss; the auto test's figure (``metrics.layout.mask_geometry``,
    ``metrics.roles.border_coverage``) binarises at 0.5 on a 1-pixel ring instead.
    """
    height, width = mask.shape[-2:]
    ring = max(1, min(height, width) // 16)
    inner = torch.zeros_like(mask[:1, :1], dtype=torch.bool)
    inner[..., ring:height - ring, ring:width - ring] = True
    outer = ~inner
    return (mask * outer).flatten(1).sum(dim=1) / outer.sum()


def border_loss(mask: torch.Tensor, border_max: float = 0.0) -> torch.Tensor:
    """relu(soft_border_coverage(m) − border_max): mask [N, 1, H, W] → [N].

    Not in the paper (0 weight in its presets): a label-free prior that the object layer is not
    the surround (issue 22), read on the unshifted mask since the shift's zero fill would hide it.
    """
    return F.relu(soft_border_coverage(mask) - border_max)


# ----------------------------------------------------------------------------------------------
# The ILS term (METHOD §4).

def valid_range_gate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Block the gradient of values outside (−1, 1), keep every value.

    Pixels the generator already pushed out of the image range must not be optimised further by
    the ILS term (it rewards distance, which out-of-range values could grow without bound).
    x [N, C, H, W] → (gated x, same values; validity 1[−1 < x < 1] as x's dtype).
    """
    valid = (x > -1) & (x < 1)
    return torch.where(valid, x, x.detach()), valid.to(x.dtype)


def ils_regions(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, opt_mask: bool = True,
                stop_grad: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The two (target x, condition y) pairs of the ILS bound, from the unshifted layers.

    fg, bg [N, 3, R, R], mask [N, 1, R, R] → [(b_i = m·b, f_v = m·f), (f_i = (1−m)·f, b_v = (1−m)·b)],
    after :func:`valid_range_gate`. ``opt_mask=False`` detaches the mask; ``stop_grad`` detaches
    the conditions y. Presets: opt_mask True, stop_grad False, so the term also shapes the mask.
    """
    fg, _ = valid_range_gate(fg)
    bg, _ = valid_range_gate(bg)
    if not opt_mask:
        mask = mask.detach()
    pairs = [(mask * bg, mask * fg), ((1 - mask) * fg, (1 - mask) * bg)]
    if stop_grad:
        pairs = [(x, y.detach()) for x, y in pairs]
    return pairs


def resize_to(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Nearest-neighbour resize to the estimator resolution (a no-op when it already matches)."""
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode='nearest')


def club_bound(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, distribution: str = 'predetermined_laplace',
               estimator: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
               neg_weight: float = 1.0) -> torch.Tensor:
    """CLUB-sample upper bound Î = mean_i log q(x_i | y_i) − mean_i log q(x_{π(i)} | y_i) (scalar).

    x, y [N, C, H, W]; perm [N] a permutation of the batch (the identity gives exactly 0).
    The log-normaliser of q cancels between the two terms, so only the data terms remain:

    * predetermined_laplace: log q = −mean_elements |x − y|;
    * predetermined_gaussian: log q = −½ mean_elements (x − y)²;
      (both: the negative term is weighted by ``neg_weight``, 1 in every preset)
    * neural_laplace / neural_gaussian: (μ, s) = estimator(y) (already resized), log q =
      −Σ_elements |x − μ| e^{−s} (resp. (x − μ)² e^{−s}); the bound is halved (METHOD §4: the
      original's ½ applies to both learned forms).
    """
    if distribution in ('predetermined_laplace', 'predetermined_gaussian'):
        power = 1 if distribution == 'predetermined_laplace' else 2
        positive = (x - y).abs().pow(power).flatten(1).mean(dim=1)
        negative = (x[perm] - y).abs().pow(power).flatten(1).mean(dim=1)
        bound = -positive.mean() + neg_weight * negative.mean()
        return bound if power == 1 else 0.5 * bound
    if distribution in ('neural_laplace', 'neural_gaussian'):
        if estimator is None:
            raise ValueError(f'{distribution} needs an estimator network')
        mu, log_scale = estimator(y)
        power = 1 if distribution == 'neural_laplace' else 2
        inv_scale = torch.exp(-log_scale)
        positive = ((x - mu).abs().pow(power) * inv_scale).flatten(1).sum(dim=1)
        negative = ((x[perm] - mu).abs().pow(power) * inv_scale).flatten(1).sum(dim=1)
        return 0.5 * (negative - positive).mean()
    raise ValueError(f'unknown ILS distribution {distribution!r}')


def ils_l1_distance(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The ILS_L1 variant (scalar, to be minimised):

    −[mean(|b − sg(f)|·sg(m)·V_b) + mean(|f − sg(b)|·(1 − sg(m))·V_f)], means over N·3·H·W.
    Only the hidden part of each layer moves (b inside the mask, f outside it), away from the
    frozen visible part of the other layer; the mask gets no gradient. V = valid-range indicator.
    """
    fg_gated, fg_valid = valid_range_gate(fg)
    bg_gated, bg_valid = valid_range_gate(bg)
    mask = mask.detach()
    inside = ((bg_gated - fg.detach()).abs() * mask * bg_valid).mean()
    outside = ((fg_gated - bg.detach()).abs() * (1 - mask) * fg_valid).mean()
    return -(inside + outside)


def ils_sigma(cur_kimg: int, initial_sigma: float, sigma: float, anti_kimg: float = 400) -> float:
    """The ILS weight σ in force at ``cur_kimg`` = floor(images shown / 1000) (strategy 'all_time').

    σ = initial_sigma while cur_kimg ≤ anti_kimg (400 in the paper presets), then sigma.
    """
    return float(initial_sigma) if cur_kimg <= anti_kimg else float(sigma)


def estimator_nll(x: torch.Tensor, mu: torch.Tensor, log_scale: torch.Tensor, distribution: str) -> torch.Tensor:
    """Negative log-likelihood of x under the learned q, summed per sample: [N, C, H, W] → [N].

    neural_laplace: Σ(s + |x − μ| e^{−s}) (log 2 dropped); neural_gaussian with s = log σ²:
    Σ((x − μ)² e^{−s} + s + ½ log 2π) (the ½ on the first two terms is dropped as in the
    original: same optimum).
    """
    if distribution == 'neural_laplace':
        per_element = log_scale + (x - mu).abs() * torch.exp(-log_scale)
    elif distribution == 'neural_gaussian':
        per_element = (x - mu).square() * torch.exp(-log_scale) + log_scale + 0.5 * math.log(2 * math.pi)
    else:
        raise ValueError(f'estimator_nll: unknown distribution {distribution!r}')
    return per_element.flatten(1).sum(dim=1)


# ----------------------------------------------------------------------------------------------
# R1 (METHOD §3).

def r1_penalty(real_img: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """‖∇_x D(x)‖² per sample: real_img [N, C, H, W] (requires grad), logits [N, 1] → [N].

    The graph is kept (create_graph) so that the penalty itself can be back-propagated to D.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True)
    return grad.square().flatten(1).sum(dim=1)


# ----------------------------------------------------------------------------------------------
# Options of StyleGAN2 that every ILSGAN preset leaves off: path length, style mixing.

def path_lengths(img: torch.Tensor, ws: list[torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
    """‖J_wᵀ y‖ per sample (Karras et al. 2020, §3.2): img [N, C, H, W] made from the style
    inputs ``ws`` (a list of [N, K_i, w_dim], graph kept), noise y [N, C, H, W] → [N].

    Jᵀy is the gradient of Σ img·y with respect to each style input; the length is the root of the
    mean over all ΣK_i inputs of its squared norm, so that it does not grow with the number of
    layers. The graph is kept so that the penalty trains G.
    """
    grads = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    return torch.cat([g.square().sum(dim=2) for g in grads], dim=1).mean(dim=1).sqrt()


MIXING_MODES = ('orig', 'style', 'layer', 'none')


def mixing_cutoffs(mode: str, num_ws: int) -> tuple[int, int]:
    """(bg, fg) indices from which the second latent's ws replace the first's (ORIGINAL §2.4).

    'orig': an independent cutoff in [1, num_ws) for each stack; 'style': one cutoff in
    [1, 2·num_ws) over the list bg ws then fg ws; 'layer': the whole bg stack, no fg ws.
    Draws from the global CPU generator.
    """
    if mode == 'orig':
        cutoffs = torch.randint(1, num_ws, [2])
        return int(cutoffs[0]), int(cutoffs[1])
    if mode == 'style':
        cutoff = int(torch.randint(1, 2 * num_ws, []))
        return min(cutoff, num_ws), max(cutoff - num_ws, 0)
    if mode == 'layer':
        return 0, num_ws
    raise ValueError(f'unknown style-mixing mode {mode!r}; valid: {", ".join(MIXING_MODES[:3])}')


# ----------------------------------------------------------------------------------------------
# The phases.

class ILSLoss:
    """Runs G-main, D-main (+ estimator fit) and D-reg on one rank's batch and calls backward.

    Networks: G (:class:`training.networks.LayeredGenerator`), D, the perturbed composition, an
    optional augment pipe (applied to every image D sees) and optional learned estimators.
    Each phase method returns ``{name: scalar loss}`` (detached) for the loop's finiteness check.
    """

    def __init__(self, G: torch.nn.Module, D: torch.nn.Module, composition: torch.nn.Module,
                 augment_pipe: torch.nn.Module | None = None, estimators: torch.nn.Module | None = None, *,
                 r1_gamma: float, bin_weight: float = 2.0, msize_weight: float = 2.0, min_msize: float = 0.25,
                 max_msize: float | None = None, msize_on_batch: bool = False,
                 border_weight: float = 0.0, border_max: float = 0.0,
                 estimator: str = 'club', distribution: str | None = 'predetermined_laplace',
                 neg_weight: float = 1.0, opt_mask: bool = True, stop_grad: bool = False,
                 estimator_weight: float = 0.1, style_mixing_prob: float = 0.0, mixing: str = 'orig',
                 pl_weight: float = 0.0, pl_decay: float = 0.01) -> None:
        self.G, self.D, self.composition = G, D, composition
        self.augment_pipe, self.estimators = augment_pipe, estimators
        self.r1_gamma = r1_gamma
        self.bin_weight, self.msize_weight, self.min_msize = bin_weight, msize_weight, min_msize
        self.max_msize, self.msize_on_batch = max_msize, msize_on_batch
        self.border_weight, self.border_max = border_weight, border_max
        self.estimator, self.distribution = estimator, distribution
        self.neg_weight, self.opt_mask, self.stop_grad = neg_weight, opt_mask, stop_grad
        self.estimator_weight = estimator_weight
        if mixing not in MIXING_MODES:
            raise ValueError(f'unknown style-mixing mode {mixing!r}; valid: {", ".join(MIXING_MODES)}')
        self.style_mixing_prob = style_mixing_prob if mixing != 'none' else 0.0
        self.mixing = mixing
        self.pl_weight, self.pl_decay = pl_weight, pl_decay
        self.pl_mean = torch.zeros([])  # EMA of the path lengths, the target a of the penalty
        if distribution in ('neural_laplace', 'neural_gaussian') and estimators is None:
            raise ValueError(f'{distribution} needs estimator networks')

    # -- helpers --------------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(ws_bg, ws_fg) [N, num_ws, w_dim] of z [N, z_dim]. With probability style_mixing_prob
        (0 in every preset: then no random number is drawn) the ws past the cutoffs of
        :func:`mixing_cutoffs` come from a second latent, which leaves w_avg alone; in 'orig' mode
        each stack mixes with that probability independently of the other."""
        ws_bg, ws_fg = self.G.mapping(z)
        if self.style_mixing_prob <= 0:
            return ws_bg, ws_fg
        # 'orig' decides for each stack on its own, as the original's two StyleGAN2 mixing blocks.
        mixed = [float(torch.rand([])) < self.style_mixing_prob for _ in range(2 if self.mixing == 'orig' else 1)]
        if any(mixed):
            cutoff_bg, cutoff_fg = mixing_cutoffs(self.mixing, ws_bg.shape[1])
            if self.mixing == 'orig':  # a stack that does not mix keeps all its ws
                cutoff_bg, cutoff_fg = (c if m else ws_bg.shape[1] for c, m in zip((cutoff_bg, cutoff_fg), mixed))
            mix_bg, mix_fg = self.G.mapping(torch.randn_like(z), update_w_avg=False)
            ws_bg = torch.cat([ws_bg[:, :cutoff_bg], mix_bg[:, cutoff_bg:]], dim=1)
            ws_fg = torch.cat([ws_fg[:, :cutoff_fg], mix_fg[:, cutoff_fg:]], dim=1)
        return ws_bg, ws_fg

    def run_G(self, z: torch.Tensor, eps: torch.Tensor) -> tuple[dict, dict]:
        """(unshifted layers, shifted layers) for latents z [N, z_dim] and shifts eps [N, eps_dim]."""
        layers = self.G.synthesis(*self.mapping(z))
        return layers, self.composition(layers, eps)

    def run_D(self, img: torch.Tensor) -> torch.Tensor:
        """Logits [N, 1] of img [N, 3, R, R], through ADA when enabled."""
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img)

    def ils_term(self, layers: dict, sigma: float) -> torch.Tensor:
        """σ · (Î(b_i; f_v) + Î(f_i; b_v)) on the unshifted layers, or σ · the L1 variant (scalar)."""
        fg, bg, mask = layers['fg'], layers['bg'], layers['mask']
        if self.estimator == 'l1_distance':
            return sigma * ils_l1_distance(fg, bg, mask)
        if self.estimator != 'club':
            raise ValueError(f'unknown ILS estimator {self.estimator!r}')
        total = fg.new_zeros([])
        for pair, (x, y) in enumerate(ils_regions(fg, bg, mask, self.opt_mask, self.stop_grad)):
            perm = torch.randperm(x.shape[0], device=x.device)  # independent for each pair
            estimator = None
            if self.estimators is not None:
                x, y = resize_to(x, self.estimators.resolution), resize_to(y, self.estimators.resolution)
                estimator = _pair_estimator(self.estimators, pair)
            total = total + club_bound(x, y, perm, self.distribution, estimator, self.neg_weight)
        return sigma * total

    # -- phases ---------------------------------------------------------------------------------
    def generator_main(self, z: torch.Tensor, eps: torch.Tensor, sigma: float, gain: float = 1.0) -> dict:
        """G-main: adversarial + bin_weight·bin + msize_weight·msize on the shifted layers, + σ·ILS
        on the unshifted ones; mean over the batch, backward (updates G only)."""
        layers, shifted = self.run_G(z, eps)
        fake_logits = self.run_D(shifted['img'])
        adv = generator_adversarial_loss(fake_logits)
        binarization = mask_binarization_loss(shifted['mask'])
        msize = min_mask_size_loss(shifted['mask'], self.min_msize, self.max_msize, self.msize_on_batch)
        ils = self.ils_term(layers, sigma)
        total = (adv + self.bin_weight * binarization + self.msize_weight * msize).mean() + ils
        if self.border_weight > 0:
            border = border_loss(layers['mask'], self.border_max)
            total = total + self.border_weight * border.mean()
            training_stats.report('Loss/G/border', border)
        training_stats.report('Loss/scores/fake', fake_logits)
        training_stats.report('Loss/signs/fake', fake_logits.sign())
        training_stats.report('Loss/G/adv', adv)
        training_stats.report('Loss/G/bin', binarization)
        training_stats.report('Loss/G/msize', msize)
        training_stats.report('Loss/G/ils', ils)
        training_stats.report('Loss/G/total', total)
        total.mul(gain).backward()
        return {'Loss/G/total': total.detach()}

    def generator_reg(self, z: torch.Tensor, gain: float = 1.0) -> dict:
        """G-reg: pl_weight · (‖J_wᵀ y‖ − a)², y ~ N(0, I)/√(HW), a = EMA of the lengths (decay
        ``pl_decay``), on the unshifted composite of z [N, z_dim] with respect to the ws of both
        mapping networks; mean over the batch, backward (updates G)."""
        ws_bg, ws_fg = self.mapping(z)
        img = self.G.synthesis(ws_bg, ws_fg)['img']
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        lengths = path_lengths(img, [ws_bg, ws_fg], noise)
        self.pl_mean = self.pl_mean.to(lengths.device).lerp(lengths.mean().detach(), self.pl_decay)
        penalty = (lengths - self.pl_mean).square()
        loss_pl = penalty * self.pl_weight
        training_stats.report('Loss/pl_penalty', penalty)
        training_stats.report('Loss/G/reg', loss_pl)
        total = loss_pl.mean()
        total.mul(gain).backward()
        return {'Loss/G/reg': total.detach()}

    def discriminator_main(self, real_img: torch.Tensor, z: torch.Tensor, eps: torch.Tensor,
                           gain: float = 1.0) -> tuple[dict, torch.Tensor]:
        """D-main: softplus(D(fake)) + softplus(−D(real)) with G frozen, plus the estimators' NLL
        (weight ``estimator_weight``) on the unshifted layers of the same fakes. Backward updates
        D and the estimators. Returns (losses, real logits [N, 1] detached, for ADA)."""
        with torch.no_grad():
            layers, shifted = self.run_G(z, eps)
        fake_logits = self.run_D(shifted['img'])
        real_logits = self.run_D(real_img.detach())
        loss_fake, loss_real = discriminator_adversarial_loss(fake_logits, real_logits)
        total = (loss_fake + loss_real).mean()
        training_stats.report('Loss/scores/fake', fake_logits)
        training_stats.report('Loss/signs/fake', fake_logits.sign())
        training_stats.report('Loss/scores/real', real_logits)
        training_stats.report('Loss/signs/real', real_logits.sign())
        training_stats.report('Loss/D/fake', loss_fake)
        training_stats.report('Loss/D/real', loss_real)
        losses = {'Loss/D/total': total.detach()}
        if self.estimators is not None:
            nll = self.estimator_fit_loss(layers)
            training_stats.report('Loss/estimator/nll', nll)
            losses['Loss/estimator/nll'] = nll.detach()
            total = total + self.estimator_weight * nll
        total.mul(gain).backward()
        return losses, real_logits.detach()

    def estimator_fit_loss(self, layers: dict) -> torch.Tensor:
        """Σ over both pairs of the batch-mean NLL of x given y (scalar); the layers carry no
        gradient here, only the estimators learn."""
        pairs = ils_regions(layers['fg'].detach(), layers['bg'].detach(), layers['mask'].detach())
        total = layers['fg'].new_zeros([])
        for pair, (x, y) in enumerate(pairs):
            x, y = resize_to(x, self.estimators.resolution), resize_to(y, self.estimators.resolution)
            mu, log_scale = self.estimators(y, pair)
            total = total + estimator_nll(x, mu, log_scale, self.distribution).mean()
        return total

    def discriminator_reg(self, real_img: torch.Tensor, gain: float = 1.0) -> tuple[dict, torch.Tensor]:
        """D-reg: (γ/2)·‖∇_x D(aug(x))‖² on reals, mean over the batch, times ``gain`` (the lazy
        interval). Weight gradients are skipped while taking ∇_x (they would be discarded)."""
        real_img = real_img.detach().requires_grad_(True)
        real_logits = self.run_D(real_img)
        with conv2d_gradfix.no_weight_gradients():
            penalty = r1_penalty(real_img, real_logits)
        loss_r1 = penalty * (self.r1_gamma / 2)
        training_stats.report('Loss/scores/real', real_logits)
        training_stats.report('Loss/signs/real', real_logits.sign())
        training_stats.report('Loss/r1_penalty', penalty)
        training_stats.report('Loss/r1', loss_r1)
        total = loss_r1.mean()
        total.mul(gain).backward()
        return {'Loss/r1': total.detach()}, real_logits.detach()


def _pair_estimator(estimators: torch.nn.Module, pair: int) -> Callable[[torch.Tensor], tuple]:
    """``y -> estimators(y, pair)``: the q(x | y) of one region pair, as club_bound expects it."""
    return lambda y: estimators(y, pair)
