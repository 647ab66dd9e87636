"""VoxelMorph U-Net with Monte Carlo dropout, and the registration network built on it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Convolution
from monai.utils import look_up_option

from mtreg_monai.networks.blocks.conditional import ConditionalInstanceNorm, WeightMappingNetwork
from mtreg_monai.networks.blocks.mc_dropout import MCDropout

__all__ = ["MCDropoutVoxelMorphUNet", "MCVoxelMorph", "DROPOUT_SCOPES"]

#: where the MC dropout layers sit; see :class:`MCDropoutVoxelMorphUNet`.
DROPOUT_SCOPES = ("all", "decoder", "head")

_LEAKY_RELU = ("leakyrelu", {"negative_slope": 0.2, "inplace": True})


def _check_channels(name: str, channels: Sequence[int], allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence):
        raise TypeError(f"{name} must be a sequence of positive ints, got {type(channels).__name__}.")
    out = tuple(channels)
    if (not out and not allow_empty) or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in out):
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}sequence of positive ints, got {out}.")
    return out


class MCDropoutVoxelMorphUNet(nn.Module):
    """
    The VoxelMorph U-Net (Balakrishnan et al., CVPR 2018, "VM-2") with Monte Carlo dropout.

    Layout, for the default channels and a 3-D input of size S::

        input (B, 2, S)         moving and fixed, concatenated
        encoder                 4 stride-2 3x3x3 convolutions: 16, 32, 32, 32 channels at S/2 .. S/16
        decoder                 one conv per level (32 each) from S/16 to S/2, each followed by x2
                                nearest upsampling and concatenation with the encoder skip of that level
                                (the last upsampling comes after the refinement convolutions)
        refinement              convs at S/2 (32), then x2 upsampling and concatenation with the input
        final                   convs at S (16, 16)
        head                    3x3x3 conv to ``out_channels``, weights ~ N(0, 1e-5), bias 0:
                                the initial displacement is near zero

    Every convolution but the head is followed by LeakyReLU(0.2). Monte Carlo dropout layers
    (:class:`~mtreg_monai.networks.blocks.MCDropout`) sit according to ``dropout_scope``:

    - ``"all"``: after every convolution; ``mc_sample`` reruns the whole network for every sample.
    - ``"decoder"``: after every decoder, refinement and final convolution; the encoder is computed once
      and shared by the samples.
    - ``"head"``: only on the features entering the head; everything up to the head is computed once and
      only the head convolution runs per sample (the cheapest: about 4% of a forward pass per sample at
      the default channels; with channel-wise dropout the N samples are a single convolution).

    Dropout is stochastic in training mode, or in eval mode inside
    :func:`~mtreg_monai.networks.utils.mc_dropout_mode`. With ``dropout=0`` no dropout layers are built.

    Args:
        spatial_dims: number of spatial dimensions, 2 or 3.
        in_channels: channels of the concatenated input (2: moving, fixed).
        out_channels: channels of the output field; defaults to ``spatial_dims``.
        encoder_channels: output channels of the stride-2 encoder convolutions, finest first.
        decoder_channels: output channels of the per-level decoder convolutions, coarsest first;
            same length as ``encoder_channels``.
        refine_channels: convolutions at half resolution after the last decoder level (may be empty).
        final_channels: convolutions at full resolution before the head (at least one).
        dropout: dropout probability of the MC dropout layers, in ``[0, 1)``.
        dropout_scope: one of :data:`DROPOUT_SCOPES`.
        channelwise_dropout: drop whole feature channels (as ``nn.Dropout3d``) rather than single voxels. With
            scope ``"head"`` the N samples are one convolution with the masks applied to the head's weights
            (``conv(m * y, W) = conv(y, m * W)``) instead of N convolutions of masked features.
        kernel_size: convolution kernel size.
        head_init_std: standard deviation of the head's initial weights.
        condition_dim: 0 (default) for an unconditional network; ``n > 0`` adds a conditional instance
            normalisation (:class:`~mtreg_monai.networks.blocks.ConditionalInstanceNorm`) after every decoder,
            refinement and final convolution, driven by an ``n``-dim code passed to ``forward`` (CIR-DM).

    The spatial size of the input must be divisible by ``2 ** len(encoder_channels)`` (16 by default).

    Example::

        net = MCDropoutVoxelMorphUNet(dropout=0.2)
        x = torch.rand(1, 2, 64, 64, 48)
        field = net(x)  # (1, 3, 64, 64, 48)
        net.eval()
        samples = net.mc_sample(x, num_samples=6)  # (6, 1, 3, 64, 64, 48)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        out_channels: int | None = None,
        encoder_channels: Sequence[int] = (16, 32, 32, 32),
        decoder_channels: Sequence[int] = (32, 32, 32, 32),
        refine_channels: Sequence[int] = (32,),
        final_channels: Sequence[int] = (16, 16),
        dropout: float = 0.0,
        dropout_scope: str = "head",
        channelwise_dropout: bool = True,
        kernel_size: int = 3,
        head_init_std: float = 1e-5,
        condition_dim: int = 0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels}.")
        enc = _check_channels("encoder_channels", encoder_channels)
        dec = _check_channels("decoder_channels", decoder_channels)
        refine = _check_channels("refine_channels", refine_channels, allow_empty=True)
        final = _check_channels("final_channels", final_channels)
        if len(dec) != len(enc):
            raise ValueError(
                f"decoder_channels must have one entry per encoder level ({len(enc)}), got {len(dec)}: {dec}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = spatial_dims if out_channels is None else int(out_channels)
        self.dropout = MCDropout(dropout).p  # validates the probability
        self.channelwise_dropout = bool(channelwise_dropout)
        self.dropout_scope = look_up_option(dropout_scope, DROPOUT_SCOPES)
        self.levels = len(enc)

        def block(c_in: int, c_out: int, stride: int, stochastic: bool) -> nn.Sequential:
            layers: list[nn.Module] = [
                Convolution(
                    spatial_dims, c_in, c_out, strides=stride, kernel_size=kernel_size, act=_LEAKY_RELU, norm=None
                )
            ]
            if stochastic and self.dropout > 0:
                layers.append(MCDropout(self.dropout, channelwise=self.channelwise_dropout))
            return nn.Sequential(*layers)

        drop_enc = self.dropout_scope == "all"
        drop_dec = self.dropout_scope in ("all", "decoder")
        self.encoder = nn.ModuleList()
        c = in_channels
        for c_out in enc:
            self.encoder.append(block(c, c_out, 2, drop_enc))
            c = c_out
        # skips available to the decoder at levels S/2^(L-1) .. S/2 (encoder outputs except the deepest)
        skip_channels = list(reversed(enc[:-1]))
        self.decoder = nn.ModuleList()
        for i, c_out in enumerate(dec):
            c_in = c if i == 0 else c + skip_channels[i - 1]
            self.decoder.append(block(c_in, c_out, 1, drop_dec))
            c = c_out
        self.refine = nn.ModuleList()
        for c_out in refine:
            self.refine.append(block(c, c_out, 1, drop_dec))
            c = c_out
        self.final = nn.ModuleList()
        c = c + in_channels
        for c_out in final:
            self.final.append(block(c, c_out, 1, drop_dec))
            c = c_out
        if isinstance(condition_dim, bool) or not isinstance(condition_dim, int) or condition_dim < 0:
            raise ValueError(f"condition_dim must be a non-negative int, got {condition_dim!r}.")
        self.condition_dim = condition_dim
        decoder_side = [
            layer[0].conv.out_channels for part in (self.decoder, self.refine, self.final) for layer in part
        ]
        self.conditioning = nn.ModuleList(
            [ConditionalInstanceNorm(c_out, condition_dim) for c_out in decoder_side] if condition_dim else []
        )
        self.head_dropout: nn.Module = (
            MCDropout(self.dropout, channelwise=self.channelwise_dropout) if self.dropout > 0 else nn.Identity()
        )
        conv_type = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.head = conv_type(c, self.out_channels, kernel_size=kernel_size, padding=kernel_size // 2)
        nn.init.normal_(self.head.weight, mean=0.0, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Expecting x of shape (B, {self.in_channels}, *spatial) with {self.spatial_dims} spatial dims, "
                f"got {tuple(x.shape)}."
            )
        factor = 2**self.levels
        if any(s % factor for s in x.shape[2:]):
            raise ValueError(
                f"The spatial size of x must be divisible by {factor} (2 ** number of encoder levels), "
                f"got {tuple(x.shape[2:])}; pad the images (e.g. monai.transforms.DivisiblePadd(k={factor}))."
            )

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """
        Encoder features, finest first: ``[x, e_1 (S/2), ..., e_L (S/2^L)]``.

        The input follows the memory format of the weights: after ``net.to(memory_format=torch.channels_last_3d)``
        (about 15 % faster on a CPU) the input is made channels-last too.
        """
        if self.spatial_dims == 3 and self.head.weight.is_contiguous(memory_format=torch.channels_last_3d):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        feats = [x]
        for layer in self.encoder:
            feats.append(layer(feats[-1]))
        return feats

    def decode(self, feats: list[torch.Tensor], code: torch.Tensor | None = None) -> torch.Tensor:
        """
        Decoder, refinement and final convolutions: features at full resolution, before the head dropout.

        ``code`` (B, condition_dim) is required when the network is conditional and ignored otherwise.
        """
        if self.condition_dim and (code is None or code.shape != (feats[0].shape[0], self.condition_dim)):
            raise ValueError(
                f"A conditional network needs code of shape ({feats[0].shape[0]}, {self.condition_dim}), "
                f"got {None if code is None else tuple(code.shape)}."
            )
        cin = iter(self.conditioning)

        def block(layer: nn.Module, y: torch.Tensor) -> torch.Tensor:
            y = layer(y)
            return next(cin)(y, code) if self.condition_dim else y

        y = feats[-1]
        for i, layer in enumerate(self.decoder):
            if i > 0:
                y = torch.cat([self._up(y), feats[self.levels - i]], dim=1)
            y = block(layer, y)
        for layer in self.refine:
            y = block(layer, y)
        y = torch.cat([self._up(y), feats[0]], dim=1)
        for layer in self.final:
            y = block(layer, y)
        return y

    def forward_head(self, y: torch.Tensor) -> torch.Tensor:
        """
        Head dropout and the output convolution on full-resolution features.

        The head always runs in float32, also under ``torch.autocast``: a bfloat16 displacement (8 significant
        bits) would be quantised to ~0.02 voxel at 5 voxels, enough to make the smoothness term and the Jacobian
        determinant noisy. The head is ~1 % of the network's arithmetic.
        """
        with torch.autocast(y.device.type, enabled=False):
            return self.head(self.head_dropout(y.float()))

    def forward(self, x: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            x: moving and fixed images concatenated along channels, (B, 2, H, W, D).
            code: (B, condition_dim) conditioning code, for a conditional network only.

        Returns:
            the output field (B, out_channels, H, W, D): a displacement, or a stationary velocity field
            when the caller integrates it, in voxel units.

        Raises:
            ValueError: when ``x`` has the wrong number of dims or channels, or a size not divisible by
                ``2 ** len(encoder_channels)``.
        """
        self._check_input(x)
        return self.forward_head(self.decode(self.encode(x), code))

    def mc_sample(self, x: torch.Tensor, num_samples: int, code: torch.Tensor | None = None) -> torch.Tensor:
        """
        Draw ``num_samples`` stochastic predictions, recomputing only the layers from the first dropout on.

        The shared part (nothing for scope ``"all"``, the encoder for ``"decoder"``, everything but the head
        for ``"head"``) is computed once; the samples then run one after the other, so the random masks are
        drawn in the same order as ``num_samples`` calls of ``forward``: for the same seed the result equals
        ``torch.stack([net(x) for _ in range(num_samples)])``. Dropout must be stochastic (training mode or
        :func:`~mtreg_monai.networks.utils.mc_dropout_mode`) for the samples to differ.

        Args:
            x: (B, 2, H, W, D) moving and fixed images.
            num_samples: number of samples N >= 1.

        Returns:
            (N, B, out_channels, H, W, D) fields.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}.")
        self._check_input(x)
        if self.dropout_scope == "all":
            return torch.stack([self.forward_head(self.decode(self.encode(x), code)) for _ in range(num_samples)])
        feats = self.encode(x)
        if self.dropout_scope == "decoder":
            return torch.stack([self.forward_head(self.decode(feats, code)) for _ in range(num_samples)])
        y = self.decode(feats, code)
        drop = self.head_dropout
        if isinstance(drop, MCDropout) and drop.channelwise and drop.stochastic:
            return self._linear_head_samples(y, drop, num_samples)
        return torch.stack([self.forward_head(y) for _ in range(num_samples)])

    def _linear_head_samples(self, y: torch.Tensor, drop: MCDropout, num_samples: int) -> torch.Tensor:
        """
        Head outputs for ``num_samples`` channel-dropout masks in one convolution, through the head's linearity.

        ``head(m * y) = conv(y, W * m) + bias`` for a per-channel mask ``m``: masking the weights instead of the
        features turns the N samples into one convolution with N times the output channels (on a CPU at
        64x64x48 about a third of the time of N head convolutions). The masks are drawn exactly as ``forward``
        draws them, one sample after the other, so the result equals N forward passes up to rounding.
        """
        b, c = y.shape[:2]
        out = self.out_channels
        y = y.float()
        with torch.autocast(y.device.type, enabled=False):  # float32, as forward_head
            masks = torch.stack([drop.channel_mask(b, c, y) for _ in range(num_samples)], dim=1)  # (B, N, c)
            weight, bias = self.head.weight, self.head.bias
            conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
            samples = []
            for i in range(b):  # one convolution per pair: its N masks become N groups of output channels
                w = weight.unsqueeze(0) * masks[i].reshape(num_samples, 1, c, *([1] * self.spatial_dims))
                w = w.reshape(num_samples * out, c, *weight.shape[2:])
                s = conv(y[i : i + 1], w, bias.repeat(num_samples), padding=self.head.padding)
                samples.append(s.reshape(num_samples, out, *y.shape[2:]))
            return torch.stack(samples, dim=1)  # (N, B, out, *spatial)


class MCVoxelMorph(nn.Module):
    """
    Registration network: :class:`MCDropoutVoxelMorphUNet` followed, for the diffeomorphic variant, by
    scaling-and-squaring integration of a stationary velocity field (MONAI's ``DVF2DDF``).

    This is the bundle's ``network_def``: it takes one tensor (B, 2, H, W, D) holding the moving and the fixed
    image (in that channel order) and returns the dense displacement field (B, 3, H, W, D) in voxel units,
    channel i along spatial axis i, sampled on the fixed grid: ``warped(x) = moving(x + ddf(x))``, which is
    what ``monai.networks.blocks.Warp()(moving, ddf)`` computes. Warping is left to the caller.

    With ``conditional=True`` it is the conditional registration network of CIR-DM (Mok and Chung, MICCAI 2021):
    a mapping network turns the regularisation weight of each pair into a code that drives conditional instance
    normalisation in the decoder; ``forward(x, reg_weight)`` takes the (B,) weights, and ``forward(x)`` uses
    ``inference_reg_weight`` (the paper's 5), so the exported network still takes one tensor.

    Args:
        integration_steps: 0 for plain VoxelMorph (the backbone's output is the displacement); ``n > 0`` for
            DIF-VM, the backbone's output is a velocity field integrated in ``n`` squaring steps.
        conditional: build the CIR-DM conditioning.
        condition_dim: width of the mapping network and of the code, when conditional.
        inference_reg_weight: weight used when ``forward`` gets none, when conditional.
        backbone_kwargs: keyword arguments of :class:`MCDropoutVoxelMorphUNet` (``dropout``, ``dropout_scope``,
            channels, ...), passed through unchanged.

    Example::

        net = MCVoxelMorph(dropout=0.2)
        moving, fixed = torch.rand(1, 1, 64, 64, 48), torch.rand(1, 1, 64, 64, 48)
        ddf = net(torch.cat([moving, fixed], dim=1))  # (1, 3, 64, 64, 48)
        warped = monai.networks.blocks.Warp()(moving, ddf)
    """

    def __init__(
        self,
        integration_steps: int = 0,
        conditional: bool = False,
        condition_dim: int = 64,
        inference_reg_weight: float = 5.0,
        **backbone_kwargs,
    ) -> None:
        super().__init__()
        if isinstance(integration_steps, bool) or not isinstance(integration_steps, int) or integration_steps < 0:
            raise ValueError(f"integration_steps must be a non-negative int, got {integration_steps!r}.")
        self.conditional = bool(conditional)
        if conditional and (isinstance(condition_dim, bool) or not isinstance(condition_dim, int) or condition_dim < 1):
            raise ValueError(f"condition_dim must be a positive int for a conditional network, got {condition_dim!r}.")
        self.backbone = MCDropoutVoxelMorphUNet(condition_dim=condition_dim if conditional else 0, **backbone_kwargs)
        self.mapping = WeightMappingNetwork(condition_dim) if conditional else None
        self.inference_reg_weight = float(inference_reg_weight)
        if self.backbone.out_channels != self.backbone.spatial_dims:
            raise ValueError(
                f"out_channels must equal spatial_dims ({self.backbone.spatial_dims}) for a displacement, "
                f"got {self.backbone.out_channels}."
            )
        self.integration_steps = integration_steps
        self.integrate = (
            DVF2DDF(num_steps=integration_steps, mode="bilinear", padding_mode="zeros")
            if integration_steps > 0
            else None
        )

    @property
    def spatial_dims(self) -> int:
        return self.backbone.spatial_dims

    def _to_ddf(self, field: torch.Tensor) -> torch.Tensor:
        return field if self.integrate is None else self.integrate(field)

    def _code(self, x: torch.Tensor, reg_weight: torch.Tensor | float | None) -> torch.Tensor | None:
        if self.mapping is None:
            if reg_weight is not None:
                raise ValueError("reg_weight is only accepted by a conditional network (conditional=True).")
            return None
        weight = torch.as_tensor(
            self.inference_reg_weight if reg_weight is None else reg_weight, dtype=x.dtype
        ).reshape(-1)
        weight = weight.to(x.device).reshape(-1).expand(x.shape[0]) if weight.numel() == 1 else weight.to(x.device)
        if weight.shape != (x.shape[0],):
            raise ValueError(f"reg_weight must be a scalar or of shape ({x.shape[0]},), got {tuple(weight.shape)}.")
        return self.mapping(weight)

    def forward(self, x: torch.Tensor, reg_weight: torch.Tensor | float | None = None) -> torch.Tensor:
        """
        Args:
            x: (B, 2, H, W, D), channel 0 the moving image, channel 1 the fixed image.
            reg_weight: (B,) or scalar regularisation weight, conditional networks only (default
                ``inference_reg_weight``).

        Returns:
            the displacement field (B, 3, H, W, D) in voxels (convention in the class docstring).
        """
        return self._to_ddf(self.backbone(x, self._code(x, reg_weight)))

    def mc_sample(
        self, x: torch.Tensor, num_samples: int, reg_weight: torch.Tensor | float | None = None
    ) -> torch.Tensor:
        """
        ``num_samples`` Monte Carlo dropout displacements; see :meth:`MCDropoutVoxelMorphUNet.mc_sample`.

        Returns:
            (N, B, 3, H, W, D) displacement fields in voxels.
        """
        fields = self.backbone.mc_sample(x, num_samples, self._code(x, reg_weight))
        if self.integrate is None:
            return fields
        n, b = fields.shape[:2]
        return self.integrate(fields.flatten(0, 1)).unflatten(0, (n, b))
