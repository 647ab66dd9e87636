from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.inferers import SimpleInferer
from torch import nn

from mtreg_monai.inferers import MCSmoothnessWeight, RefinementInferer, refine_ddf
from mtreg_monai.metrics import compute_folding_percentage
from mtreg_monai.networks import MCVoxelMorph

warnings.filterwarnings("ignore", message=".*native grid_sample")

CONFIGS = Path(__file__).resolve().parents[2] / "bundle" / "configs"


def smooth_volume(size: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """A smooth random texture (1, 1, *size) in [0, 1]: uniform noise box-filtered 3 times (width ~5 voxels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, *size, generator=g)
    for _ in range(3):
        x = F.avg_pool3d(F.pad(x, (1,) * 6, mode="replicate"), 3, stride=1)
    return (x - x.min()) / (x.max() - x.min())


def shifted_pair(axis: int, shift: int, n: int = 16, margin: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(moving, fixed) cut from one volume, fixed(p) = moving(p + shift e_axis): the answer is ddf = shift e_axis."""
    big = smooth_volume((n + 2 * margin,) * 3)
    fixed_sl = [slice(margin, margin + n)] * 3
    moving_sl = list(fixed_sl)
    moving_sl[axis] = slice(margin - shift, margin - shift + n)
    return big[(..., *moving_sl)], big[(..., *fixed_sl)]


class ConstantNet(nn.Module):
    """A stand-in network: returns a fixed displacement (B, 3, H, W, D) whatever the input."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 3, *x.shape[2:]), self.value, dtype=x.dtype, device=x.device)


# (axis, shift in voxels): the fixed image is the moving one shifted, ddf = shift along axis
SHIFT_CASES = [(0, 2), (2, -2)]


@pytest.mark.parametrize("axis, shift", SHIFT_CASES)
def test_known_shift(axis, shift):
    moving, fixed = shifted_pair(axis, shift)
    ddf = refine_ddf(moving, fixed, steps=30)
    centre = ddf[0, :, 4:-4, 4:-4, 4:-4].mean(dim=(1, 2, 3))
    expected = torch.zeros(3)
    expected[axis] = shift
    assert torch.allclose(centre, expected, atol=0.3), centre
    assert float(compute_folding_percentage(ddf)) == 0.0


def test_identical_images_keep_zero():
    image = smooth_volume((16, 16, 16))
    ddf = refine_ddf(image, image.clone(), steps=30, lr_decay=True)
    # Adam's steps are ~learning_rate (0.5 voxel) whatever the gradient's size; with the cosine decay of the rate
    # the loss pulls the field back to zero (measured: mean 0.03, max 0.12 voxel)
    assert float(ddf.abs().mean()) < 0.05
    assert float(ddf.abs().max()) < 0.25


def test_identical_images_constant_rate_stay_small():
    image = smooth_volume((16, 16, 16))
    ddf = refine_ddf(image, image.clone(), steps=10)
    assert float(ddf.abs().mean()) < 0.25  # the jitter lr_decay removes (measured: mean 0.13 voxel)


def test_warp_features_recovers_shift():
    moving, fixed = shifted_pair(0, 2)
    ddf = refine_ddf(moving, fixed, steps=20, warp_features=True)
    assert abs(float(ddf[0, 0, 4:-4, 4:-4, 4:-4].mean()) - 2.0) < 0.3


def test_start_is_kept_when_it_is_right():
    moving, fixed = shifted_pair(0, 2)
    start = torch.zeros(1, 3, *fixed.shape[2:])
    start[:, 0] = 2.0
    ddf = refine_ddf(moving, fixed, start, steps=10)
    centre = ddf[0, :, 4:-4, 4:-4, 4:-4].mean(dim=(1, 2, 3))
    assert torch.allclose(centre, torch.tensor([2.0, 0.0, 0.0]), atol=0.2), centre


def test_steps_zero_returns_network_output():
    inputs = torch.rand(1, 2, 16, 16, 16)
    net = ConstantNet(0.7)
    out = RefinementInferer(steps=0)(inputs, net)
    assert torch.equal(out, net(inputs))


def test_base_inferer():
    inputs = torch.rand(1, 2, 16, 16, 16)
    net = ConstantNet(0.3)
    out = RefinementInferer(steps=0, base_inferer=SimpleInferer())(inputs, net)
    assert torch.equal(out, net(inputs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape(dtype):
    inputs = torch.rand(2, 2, 16, 20, 12, dtype=dtype)
    out = RefinementInferer(steps=3)(inputs, ConstantNet())
    assert out.shape == (2, 3, 16, 20, 12)
    assert out.dtype == dtype
    assert out.device == inputs.device
    assert not out.requires_grad


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_under_no_grad(context):
    moving, fixed = shifted_pair(0, 2)
    with context():
        inputs = torch.cat([moving, fixed], dim=1)
        out = RefinementInferer(steps=15)(inputs, ConstantNet())
    assert float(out[0, 0, 4:-4, 4:-4, 4:-4].mean()) > 1.0


def test_metatensor_inputs():
    from monai.data import MetaTensor

    moving, fixed = shifted_pair(0, 2)
    out = RefinementInferer(steps=3)(MetaTensor(torch.cat([moving, fixed], dim=1)), ConstantNet())
    assert out.shape == (1, 3, 16, 16, 16) and float(out[0, 0].mean()) > 0.1


def test_pairs_do_not_interact():
    m0, f0 = shifted_pair(0, 2)
    m1, f1 = shifted_pair(1, -2)
    both = refine_ddf(torch.cat([m0, m1]), torch.cat([f0, f1]), steps=5)
    one = refine_ddf(m1, f1, steps=5)
    assert torch.allclose(both[1:], one, atol=1e-4)


def test_per_pair_weight():
    m, f = shifted_pair(0, 2)
    inputs = torch.cat([m, f], dim=1).repeat(2, 1, 1, 1, 1)
    out = RefinementInferer(steps=10)(inputs, ConstantNet(), smoothness_weight=torch.tensor([0.0, 1e4]))
    # a huge weight keeps the field near a constant: its spread is far smaller than the free pair's
    assert float(out[1].std(dim=(1, 2, 3)).max()) < 0.5 * float(out[0].std(dim=(1, 2, 3)).max())


def test_callable_weight_and_mc():
    torch.manual_seed(0)
    net = MCVoxelMorph(
        encoder_channels=(4, 4), decoder_channels=(4, 4), refine_channels=(), final_channels=(4,), dropout=0.3
    )
    inputs = torch.rand(2, 2, 16, 16, 16)
    weight = MCSmoothnessWeight(num_samples=3, k=5.0, tau=0.1)
    w = weight(inputs, net)
    assert w.shape == (2,) and bool(((w >= 0) & (w <= 5.0)).all())
    calls = []

    def spy(x, network):
        calls.append(network)
        return torch.ones(x.shape[0])

    RefinementInferer(steps=1, smoothness_weight=spy)(inputs, net)
    assert calls == [net]


ILL_OPTS = [
    ({"steps": -1}, ValueError, "steps"),
    ({"steps": 1.5}, TypeError, "steps"),
    ({"learning_rate": 0.0}, ValueError, "learning_rate"),
    ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
    ({"smoothness_weight": -1.0}, ValueError, "smoothness_weight"),
    ({"control_spacing": 0}, ValueError, "control_spacing"),
    ({"mind_radius": -1}, ValueError, "mind_radius"),
    ({"mind_dilation": 0}, ValueError, "mind_dilation"),
    ({"grid_smoothing": -1}, ValueError, "grid_smoothing"),
    ({"warp_features": 1}, TypeError, "warp_features"),
    ({"lr_decay": "yes"}, TypeError, "lr_decay"),
    ({"base_inferer": "simple"}, TypeError, "base_inferer"),
]


@pytest.mark.parametrize("kwargs, error, match", ILL_OPTS)
def test_ill_opts(kwargs, error, match):
    with pytest.raises(error, match=match):
        RefinementInferer(**kwargs)


def test_ill_shape():
    with pytest.raises(ValueError, match="inputs of shape"):
        RefinementInferer(steps=1)(torch.rand(1, 1, 16, 16, 16), ConstantNet())
    with pytest.raises(ValueError, match="ddf of shape"):
        refine_ddf(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16), torch.zeros(1, 3, 16, 16, 8))
    with pytest.raises(ValueError, match="control_spacing"):
        refine_ddf(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16), control_spacing=16)
    with pytest.raises(ValueError, match="smoothness_weight"):
        refine_ddf(torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16), smoothness_weight=torch.ones(3))


def _bundle_ddf(bundle_root, out_dir, steps: int) -> torch.Tensor:
    """The bundle's inference.json with its ``inferer`` replaced by a RefinementInferer; the ddf it wrote."""
    import nibabel as nib
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        bundle_root=str(bundle_root),
        infer_dir=str(out_dir),
        inferer={"_target_": "mtreg_monai.inferers.RefinementInferer", "steps": steps, "control_spacing": 4},
    )
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    (ddf_file,) = sorted(out_dir.glob("*/ddf.nii.gz"))
    return torch.as_tensor(nib.load(str(ddf_file)).get_fdata())


def test_bundle_inference(trained_bundle, tmp_path):
    plain = _bundle_ddf(trained_bundle, tmp_path / "plain", steps=0)
    refined = _bundle_ddf(trained_bundle, tmp_path / "refined", steps=3)
    assert plain.shape == refined.shape
    assert bool(torch.isfinite(refined).all())
    assert not torch.allclose(plain, refined)
