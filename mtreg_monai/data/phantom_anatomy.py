"""Anatomy and motion model of the synthetic abdominal CT-MR phantom (see :mod:`mtreg_monai.data.phantom`).

Everything is defined in world millimetres, RAS (+x patient's right, +y anterior, +z superior), with the field
of view centred on the origin, by smooth implicit surfaces and smooth random fields, so a subject does not
depend on the image grid: the same random draws at another ``spatial_size`` give the same subject resampled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "TISSUES",
    "ORGAN_LABELS",
    "ORGANS",
    "BODY",
    "SUBJECT_VARIATION",
    "BREATHING_WEIGHTS",
    "MOTION_MODEL",
    "FourierField",
    "draw_subject",
    "anatomy_maps",
    "motion_fields",
    "resample",
]

logger = logging.getLogger(__name__)

#: tissue classes, in the order of their ids in the tissue maps.
TISSUES = (
    "air", "lung", "skin", "subcutaneous_fat", "muscle", "visceral_fat", "liver", "spleen", "kidney_cortex",
    "kidney_medulla", "vessel", "liver_vessel", "bone_cortical", "bone_marrow", "disc", "csf", "bowel", "bowel_gas",
)  # fmt: skip
#: label values of the organs (Learn2Reg AbdomenMRCT).
ORGAN_LABELS = {"liver": 1, "spleen": 2, "right_kidney": 3, "left_kidney": 4}
#: mean organ geometry (mm): centre (x, y, z), semi-axes, rotation about z then y (degrees), relative amplitude and
#: length (mm) of the smooth random shape perturbation, taper (the liver's left lobe: thinner and more anterior).
ORGANS: dict[str, dict[str, Any]] = {
    "liver": dict(center=(22.0, 4.0, 22.0), semi_axes=(46.0, 38.0, 36.0), rotation=(0.0, 0.0), roughness=0.08,
                  roughness_length=28.0, taper=0.55),
    "spleen": dict(center=(-44.0, -18.0, 22.0), semi_axes=(13.0, 26.0, 24.0), rotation=(-35.0, 0.0),
                   roughness=0.08, roughness_length=18.0, taper=0.0),
    "right_kidney": dict(center=(34.0, -20.0, -12.0), semi_axes=(13.0, 11.0, 25.0), rotation=(30.0, 12.0),
                         roughness=0.06, roughness_length=15.0, taper=0.0),
    "left_kidney": dict(center=(-34.0, -18.0, -4.0), semi_axes=(13.0, 11.0, 25.0), rotation=(-30.0, -12.0),
                        roughness=0.06, roughness_length=15.0, taper=0.0),
}  # fmt: skip
#: body and skeleton (mm): torso semi-axes (x, y) and posterior flattening, skin, subcutaneous fat and muscle
#: thickness ranges, spine depth from the back, vertebra period and disc height, rib spacing and radius, aorta
#: and IVC centres relative to the vertebral body, diaphragm height at the periphery, dome height and radius.
BODY: dict[str, Any] = {
    "semi_axes": (78.0, 60.0), "posterior_flattening": 1.12, "skin_mm": 2.0, "fat_mm": (4.0, 12.0),
    "muscle_mm": (4.0, 6.5), "spine_depth_mm": 36.0, "vertebra_period_mm": 22.0, "disc_mm": 5.0,
    "rib_spacing_mm": 17.0, "rib_radius_mm": 2.5, "aorta": (-8.0, 17.0, 7.0), "ivc": (16.0, 20.0, 9.0, 7.0),
    "diaphragm_z": 30.0, "dome_mm": 18.0, "dome_radius_mm": 22.0,
}  # fmt: skip
#: subject-to-subject variation (uniform): organ centre shift (+-mm), organ size (+-fraction), organ rotation
#: (+-degrees), torso size (+-fraction), diaphragm height (+-mm).
SUBJECT_VARIATION = {"center_mm": 5.0, "size": 0.12, "rotation_deg": 8.0, "body_size": 0.06, "diaphragm_mm": 4.0}
#: fraction of the breathing amplitude by which each organ moves cranio-caudally (calibrated, see docs/data.md).
BREATHING_WEIGHTS = {"liver": 1.0, "spleen": 0.63, "right_kidney": 0.38, "left_kidney": 0.32}
#: motion model: weight of the static background in the organ blend, Gaussian radius (mm) of the spine's
#: anchoring, spacing (mm) of the grid the motion is built on, fixed-point iterations of its inversion.
MOTION_MODEL = {"background": 0.1, "spine_radius_mm": 14.0, "grid_mm": 4.0, "inverse_iterations": 20}


class FourierField:
    """Smooth random field ``sqrt(2/K) sum_k cos(w_k . p + phi_k)`` (random Fourier features).

    Unit variance, approximately Gaussian covariance of length ``length`` mm; evaluated on any grid.

    Args:
        rng: numpy random generator (draws ``4 * n_terms`` numbers).
        length: correlation length in mm.
        n_terms: number of cosine terms K.
    """

    def __init__(self, rng: np.random.Generator, length: float, n_terms: int = 12) -> None:
        self.w = torch.tensor(rng.standard_normal((n_terms, 3)) / length, dtype=torch.float32)
        self.phi = torch.tensor(rng.uniform(0.0, 2.0 * math.pi, n_terms), dtype=torch.float32)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The field on the grid spanned by 1-D coordinates (mm): a (len(x), len(y), len(z)) tensor.

        Separable: ``cos(a + b + c) = Re(e^{ia} e^{ib} e^{ic})``, summed over the terms by one matrix product.
        """
        ax, by, cz = x[:, None] * self.w[:, 0] + self.phi, y[:, None] * self.w[:, 1], z[:, None] * self.w[:, 2]
        cx, sx, cy, sy = ax.cos()[:, None], ax.sin()[:, None], by.cos()[None], by.sin()[None]
        a = torch.cat([cx * cy - sx * sy, -(sx * cy + cx * sy)], dim=-1).reshape(len(x) * len(y), -1)
        b = torch.cat([cz.cos(), cz.sin()], dim=-1).T
        return (a @ b).reshape(len(x), len(y), len(z)) * math.sqrt(2.0 / len(self.phi))


def resample(vol: torch.Tensor, disp: torch.Tensor, mode: str) -> torch.Tensor:
    """``vol(p + disp(p))`` for ``vol`` (C, X, Y, Z) and ``disp`` (3, X, Y, Z) in voxels; edges replicated."""
    size = disp.shape[1:]
    shapes = [[-1 if j == i else 1 for j in range(3)] for i in range(3)]
    ident = [torch.arange(n, dtype=torch.float32).view(shapes[i]) for i, n in enumerate(size)]
    # grid_sample's last axis is (W, H, D) = our axes (2, 1, 0); align_corners maps index 0 and n - 1 to -1 and 1
    grid = torch.stack([(ident[i] + disp[i]) * (2.0 / max(size[i] - 1, 1)) - 1.0 for i in (2, 1, 0)], dim=-1)
    return F.grid_sample(vol[None], grid[None], mode=mode, padding_mode="border", align_corners=True)[0]


def _box_smooth(vol: torch.Tensor, widths_mm: Sequence[float], grid_mm: float) -> torch.Tensor:
    """Two passes of a separable box filter of about ``widths_mm`` per axis over ``vol`` (X, Y, Z) on a grid of
    ``grid_mm`` mm (a width <= 0 leaves that axis alone); borders averaged over the voxels inside only."""
    out = vol[None, None]
    ks = [2 * max(1, round(w / grid_mm / 2)) + 1 if w > 0 else 1 for w in widths_mm]
    for _ in range(2):
        for axis, k in enumerate(ks):
            kernel = tuple(k if a == axis else 1 for a in range(3))
            out = F.avg_pool3d(out, kernel, 1, tuple(kk // 2 for kk in kernel), count_include_pad=False)
    return out[0, 0]


def draw_subject(rng: np.random.Generator) -> dict[str, Any]:
    """Random anatomy of one subject (a fixed number of draws, independent of the image grid)."""
    var, body = SUBJECT_VARIATION, BODY
    s: dict[str, Any] = {"body": tuple(b * (1 + rng.uniform(-1, 1) * var["body_size"]) for b in body["semi_axes"])}
    s["body_field"] = FourierField(rng, 40.0, 8)
    s["fat_mm"], s["muscle_mm"] = rng.uniform(*body["fat_mm"]), rng.uniform(*body["muscle_mm"])
    s["spine_y"] = -s["body"][1] / body["posterior_flattening"] + body["spine_depth_mm"] + rng.uniform(-2, 2)
    s["dome_z"] = body["diaphragm_z"] + rng.uniform(-1, 1) * var["diaphragm_mm"]
    s["disc_phase"], s["rib_phase"] = rng.uniform(0, body["vertebra_period_mm"]), rng.uniform(-6, 6)
    s["organs"] = {}
    for name, o in ORGANS.items():
        size = 1 + rng.uniform(-1, 1) * var["size"]
        s["organs"][name] = dict(
            o,
            center=tuple(c + rng.uniform(-1, 1) * var["center_mm"] for c in o["center"]),
            semi_axes=tuple(a * size * (1 + rng.uniform(-0.05, 0.05)) for a in o["semi_axes"]),
            rotation=tuple(r + rng.uniform(-1, 1) * var["rotation_deg"] for r in o["rotation"]),
            field=FourierField(rng, o["roughness_length"]),
        )
    s["vessels"] = (FourierField(rng, 20.0), FourierField(rng, 20.0))
    s["bowel"], s["gas"], s["bias"] = FourierField(rng, 9.0, 24), FourierField(rng, 5.0, 24), FourierField(rng, 90.0, 6)
    return s


def _box(axes: list[torch.Tensor], center: Sequence[float], radius: float) -> tuple[slice, ...]:
    out = []
    for a, c in zip(axes, center):
        idx = torch.nonzero((a - c).abs() <= radius).flatten()
        out.append(slice(int(idx[0]), int(idx[-1]) + 1) if len(idx) else slice(0, 0))
    return tuple(out)


def _organ_frame(axes, box, center, semi, rotation):
    """Coordinates of the voxels in ``box`` in an organ's frame, divided by its semi-axes."""
    x, y, z = (a[s] - c for a, s, c in zip(axes, box, center))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    rz, ry = (math.radians(r) for r in rotation)
    u, v = math.cos(rz) * x + math.sin(rz) * y, -math.sin(rz) * x + math.cos(rz) * y
    u, w = math.cos(ry) * u + math.sin(ry) * z, -math.sin(ry) * u + math.cos(ry) * z
    return u / semi[0], v / semi[1], w / semi[2]


def _paint(tissue, label, mask, name, organ=0, box=None):
    t, lab = (tissue, label) if box is None else (tissue[box], label[box])
    t.masked_fill_(mask, TISSUES.index(name))
    lab.masked_fill_(mask, organ)


def anatomy_maps(s: dict[str, Any], axes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tissue ids (into ``TISSUES``) and organ labels, uint8 (X, Y, Z), of subject ``s`` on the grid of ``axes``."""
    b = BODY
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    shape = tuple(len(a) for a in axes)
    tissue = torch.full(shape, TISSUES.index("visceral_fat"), dtype=torch.uint8)
    label = torch.zeros(shape, dtype=torch.uint8)
    # torso outline: ellipse, flatter posteriorly, smooth random perturbation; depth below the skin in mm
    yf = torch.where(y < 0, b["posterior_flattening"] * y, y)
    rho = torch.sqrt((x / s["body"][0]) ** 2 + (yf / s["body"][1]) ** 2) * (1 + 0.03 * s["body_field"](*axes))
    depth = torch.sqrt(x**2 + yf**2) * (1 / rho.clamp_min(1e-3) - 1)
    fat = b["skin_mm"] + s["fat_mm"] * (1 + 0.4 * (y / s["body"][1]).clamp(0, 1))  # skin + fat, thicker anteriorly
    ys = s["spine_y"]
    # bowel loops with gas (lower anterior abdomen), lung bases above a domed diaphragm, back and psoas muscles
    box = (slice(None), slice(int((axes[1] <= ys + 22.0).sum()), None), slice(0, int((axes[2] < 8.0).sum())))
    xb, yb, zb = (a[sl] for a, sl in zip(axes, box))
    bowel = s["bowel"](xb, yb, zb) > 0.2
    _paint(tissue, label, bowel, "bowel", box=box)
    _paint(tissue, label, bowel & (s["gas"](xb, yb, zb) + 0.02 * (yb[None, :, None] - ys) > 1.6), "bowel_gas", box=box)
    dome = s["dome_z"] + b["dome_mm"] * torch.exp(-((x.abs() - 30.0) ** 2 + y**2) / (2 * b["dome_radius_mm"] ** 2))
    _paint(tissue, label, (z > dome) & ((x.abs() > 15) | (y < ys + 12)), "lung")
    _paint(tissue, label, (z > dome) & (x.abs() <= 15) & (y >= ys + 12), "muscle")  # mediastinum
    psoas = 4.0 + 6.0 * ((10.0 - z) / 60.0).clamp(0, 1)
    for sx in (-1.0, 1.0):
        _paint(tissue, label, ((x - sx * 20.0) / 13.0) ** 2 + ((y - ys + 24.0) / 11.0) ** 2 < 1, "muscle")
        _paint(tissue, label, (x - sx * 18.0) ** 2 + (y - ys - 2.0) ** 2 < psoas**2, "muscle")
    # organs: perturbed, tapered ellipsoids; liver and spleen below the diaphragm; kidneys with cortex and hilum
    for name, o in s["organs"].items():
        semi, box = o["semi_axes"], _box(axes, o["center"], 1.35 * max(o["semi_axes"]))
        u, v, w = _organ_frame(axes, box, o["center"], semi, o["rotation"])
        xb, yb, zb = (a[sl] for a, sl in zip(axes, box))
        g = 1 - o["taper"] * (1 - u.clamp(-1, 1)) / 2
        pert = o["roughness"] * o["field"](xb, yb, zb)
        if o.get("fold", 0.0) > 0:  # the hard preset's voxel-scale folds of the surface
            pert = pert + o["fold"] * o["fold_field"](xb, yb, zb)
        inside = torch.sqrt(u**2 + ((v - o["taper"] * (1 - u) / 2) / g) ** 2 + (w / g) ** 2) + pert < 1
        if "kidney" not in name:
            inside &= zb[None, None, :] < dome[box[0], box[1]]
            _paint(tissue, label, inside, name, ORGAN_LABELS[name], box)
            if name == "liver":
                f1, f2 = (f(xb, yb, zb) for f in s["vessels"])
                _paint(tissue, label, inside & (f1.abs() < 0.12) & (f2.abs() < 0.12), "liver_vessel", 1, box)
            continue
        side = 1.0 if o["center"][0] > 0 else -1.0  # the renal sinus faces the spine: -side along u
        sinus = ((u + 0.85 * side) / 0.45) ** 2 + (v / 0.45) ** 2 + (w / 0.35) ** 2 < 1
        inner = torch.sqrt(sum((c * a / max(a - 4.0, 1.0)) ** 2 for c, a in zip((u, v, w), semi))) + pert < 1
        _paint(tissue, label, inside & ~sinus, "kidney_cortex", ORGAN_LABELS[name], box)
        _paint(tissue, label, inside & inner & ~sinus, "kidney_medulla", ORGAN_LABELS[name], box)
    # aorta (patient's left) and IVC, vertebrae (bodies, discs, arches, canal), body wall, ribs, air
    ax_, ay_, ar_ = b["aorta"]
    _paint(tissue, label, (x - ax_) ** 2 + (y - ys - ay_) ** 2 < ar_**2, "vessel")
    ix_, iy_, ia_, ib_ = b["ivc"]
    _paint(tissue, label, ((x - ix_) / ia_) ** 2 + ((y - ys - iy_) / ib_) ** 2 < 1, "vessel")
    disc = torch.remainder(z - s["disc_phase"], b["vertebra_period_mm"]) < b["disc_mm"]
    rv = torch.sqrt((x / 13.0) ** 2 + ((y - ys) / 11.0) ** 2)
    _paint(tissue, label, (rv < 1) & ~disc, "bone_cortical")
    _paint(tissue, label, (rv < 0.82) & ~disc, "bone_marrow")
    _paint(tissue, label, (rv < 1) & disc, "disc")
    yc = ys - 18.0
    rc = torch.sqrt(x**2 + (y - yc) ** 2)
    arch = ((rc < 10.0) & (y < yc + 4.0)) | ((x.abs() < 3.0) & (y < yc) & (y > yc - 24.0))
    arch = (arch | ((x.abs() < 24.0) & ((y - yc - 2.0).abs() < 3.0))) & ~disc
    _paint(tissue, label, arch & (rc >= 6.0), "bone_cortical")
    _paint(tissue, label, rc < 6.0, "csf")
    _paint(tissue, label, depth < fat + s["muscle_mm"], "muscle")
    _paint(tissue, label, depth < fat, "subcutaneous_fat")
    _paint(tissue, label, depth < b["skin_mm"], "skin")
    cos_a = y / torch.sqrt(x**2 + y**2).clamp_min(1e-3)  # 1 anterior, -1 posterior
    sp, r = b["rib_spacing_mm"], b["rib_radius_mm"]
    t = (70.0 + s["rib_phase"] - z - 14.0 * (1 + cos_a) / 2) / sp  # rib k at t = k, lower anteriorly
    ribs = ((t - torch.round(t)).abs() * sp < r) & (t > -0.5) & (t < 5.5) & (cos_a < 0.75) & (cos_a > -0.8)
    ribs &= ((depth - fat - 0.5 * s["muscle_mm"]).abs() < r) & ((t < 3.5) | (cos_a < 0))
    _paint(tissue, label, ribs, "bone_cortical")
    _paint(tissue, label, depth < 0, "air")
    return tissue, label


def motion_fields(
    s: dict[str, Any],
    axes: list[torch.Tensor],
    amplitude: float,
    deformation_amplitude: float,
    deformation_spacing: float,
    rng: np.random.Generator,
    sliding: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generating motion of subject ``s`` and its inverse, both (3, X, Y, Z) in mm on the grid of ``axes``.

    ``motion``: cranio-caudal ``amplitude * sum_o b_o G_o / (background + sum_o G_o)`` (``b_o`` from
    ``BREATHING_WEIGHTS``, ``G_o`` a Gaussian of the organ's centre and semi-axes), times ``1 - exp(-r^2 / 2
    sigma^2)`` of the distance ``r`` to the spine's axis, plus a random field (a lattice of spacing
    ``deformation_spacing`` mm and standard deviation ``deformation_amplitude`` mm, trilinearly interpolated and
    box-smoothed twice with the lattice spacing). ``inverse`` solves ``inverse(x) = -motion(x + inverse(x))`` by
    fixed-point iteration. Both are built on a ``MOTION_MODEL["grid_mm"]`` grid and interpolated trilinearly.

    With ``sliding = (lateral_mm, cranio_caudal_mm)`` (the hard preset) the organ blend uses the organs' own masks
    instead of Gaussians: ``sum_o b_o M_o / (background + sum_o M_o)`` with ``M_o`` the organ's mask smoothed by a
    box of ``lateral_mm`` across (x, y) and ``cranio_caudal_mm`` along z, so each organ moves as one piece and the
    tissue beside it hardly at all, then smoothed once more along z. The
    motion is cranio-caudal, so a sharp lateral edge is a sliding (shear) boundary that does not fold, while the
    long smoothing along z keeps ``1 + du_z/dz`` positive. The motion grid is then 2 mm.
    """
    ext = [(float(a[0]), float(a[-1])) for a in axes]
    grid_mm = MOTION_MODEL["grid_mm"] if sliding is None else min(MOTION_MODEL["grid_mm"], 2.0)
    n_c = [max(2, round((hi - lo) / grid_mm) + 1) for lo, hi in ext]
    c = [torch.linspace(lo, hi, n) for (lo, hi), n in zip(ext, n_c)]
    x, y, z = c[0][:, None, None], c[1][None, :, None], c[2][None, None, :]
    if sliding is None:
        num, den = torch.zeros(()), torch.full((), MOTION_MODEL["background"])
        for name, o in s["organs"].items():
            g = torch.exp(-0.5 * sum(((q - m) / a) ** 2 for q, m, a in zip((x, y, z), o["center"], o["semi_axes"])))
            num, den = num + BREATHING_WEIGHTS[name] * g, den + g
    else:
        _, organ = anatomy_maps(s, c)
        weight = torch.zeros(n_c)
        for name, value in ORGAN_LABELS.items():
            weight = torch.where(organ == value, BREATHING_WEIGHTS[name], weight)
        widths = [sliding[0], sliding[0], sliding[1]]
        num = _box_smooth(weight, widths, grid_mm)
        den = _box_smooth((organ > 0).float(), widths, grid_mm) + MOTION_MODEL["background"]
        num, den = _box_smooth(num / den, [0.0, 0.0, sliding[1]], grid_mm), torch.ones(())
    anchor = 1 - torch.exp(-(x**2 + (y - s["spine_y"]) ** 2) / (2 * MOTION_MODEL["spine_radius_mm"] ** 2))
    motion = torch.zeros((3, *n_c))
    motion[2] = amplitude * num / den * anchor
    n_l = [max(2, math.ceil((hi - lo) / deformation_spacing) + 1) for lo, hi in ext]
    lattice = torch.from_numpy(rng.standard_normal((1, 3, *n_l)).astype(np.float32)) * deformation_amplitude
    rand = F.interpolate(lattice, size=n_c, mode="trilinear", align_corners=True)[0]
    motion = motion + torch.stack([_box_smooth(r, [deformation_spacing] * 3, grid_mm) for r in rand])
    step = torch.tensor([(hi - lo) / (n - 1) for (lo, hi), n in zip(ext, n_c)]).view(3, 1, 1, 1)
    grad = [torch.gradient(motion[i] / step[i, 0, 0, 0], dim=(0, 1, 2)) for i in range(3)]
    jac = torch.stack([torch.stack([grad[i][j] + (i == j) for j in range(3)], -1) for i in range(3)], -2)
    if float(torch.linalg.det(jac).min()) <= 0:
        logger.warning("the phantom's motion folds (Jacobian determinant <= 0): lower the motion amplitudes.")
    inverse = -motion
    for _ in range(MOTION_MODEL["inverse_iterations"]):
        inverse = -resample(motion, inverse / step, "bilinear")
    size = [len(a) for a in axes]
    return tuple(F.interpolate(f[None], size=size, mode="trilinear", align_corners=True)[0] for f in (motion, inverse))
