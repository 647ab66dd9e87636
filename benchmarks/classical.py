"""Classical registration baselines wrapped as "networks", so the bundle's evaluator scores them like the students.

Each module takes the evaluator's input, ``(B, 2, H, W, D)`` = [moving, fixed] after the bundle's preprocessing
(RAS, intensities scaled per modality, padded), registers every pair with an optimisation-based tool on the CPU
and returns the displacement in the package convention: ``(B, 3, H, W, D)``, voxel units, channel i along
spatial axis i, sampled on the fixed grid, ``warped(x) = moving(x + ddf(x))``. The RegistrationEvaluator then
warps the moving label, computes Dice, ASD and the Jacobian figures and times the call, exactly as for a network.

The tools are optional dependencies of the benchmark only (``pip install -e ".[benchmark]"``):

- :class:`ANTsSyN`: ANTsPy (``antspyx``) ``ants.registration``, SyN, Mattes mutual information;
- :class:`ElastixBSpline`: ``itk-elastix``, B-spline, advanced Mattes mutual information.

Both hand the tool the voxel size (``spacing``, mm), so step sizes and grid spacings are in mm as the tools
intend; the returned field is converted back to voxels. :func:`check_displacement_convention` verifies the axis
order, the sign and the units of a wrapper on a pair with a known shift.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["NoRegistration", "ClassicalRegistration", "ANTsSyN", "ElastixBSpline", "check_displacement_convention"]


def _as_spacing(spacing: float | Sequence[float]) -> tuple[float, float, float]:
    vals = (float(spacing),) * 3 if isinstance(spacing, (int, float)) else tuple(float(s) for s in spacing)
    if len(vals) != 3 or not all(np.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"spacing must be one positive number or three (mm per voxel), got {spacing!r}.")
    return vals  # type: ignore[return-value]


def _check_pair_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor (B, 2, H, W, D), got {type(x).__name__}.")
    if x.ndim != 5 or x.shape[1] != 2:
        raise ValueError(f"input must have shape (B, 2, H, W, D) = [moving, fixed], got {tuple(x.shape)}.")


class NoRegistration(torch.nn.Module):
    """The "Initial" row: the identity transform, a zero displacement ``(B, 3, H, W, D)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_pair_input(x)
        return torch.zeros(x.shape[0], 3, *x.shape[2:], dtype=torch.float32, device=x.device)


class ClassicalRegistration(torch.nn.Module):
    """
    Base class: registers each pair of the batch with :meth:`register`, on the CPU, and stacks the displacements.

    Args:
        spacing: voxel size of the preprocessed images in mm (one number or one per axis).
        num_threads: threads the tool may use (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``); None keeps the default.
    """

    def __init__(self, spacing: float | Sequence[float] = 1.0, num_threads: int | None = None) -> None:
        super().__init__()
        self.spacing = _as_spacing(spacing)
        if num_threads is not None:
            if int(num_threads) < 1:
                raise ValueError(f"num_threads must be >= 1, got {num_threads}.")
            os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(num_threads))

    def register(self, moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """Register one pair ``(H, W, D)`` float32 arrays; returns the displacement ``(3, H, W, D)`` in voxels."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_pair_input(x)
        arr = x.detach().float().cpu().numpy()
        ddfs = [self.register(np.ascontiguousarray(a[0]), np.ascontiguousarray(a[1])) for a in arr]
        return torch.as_tensor(np.stack(ddfs), dtype=torch.float32, device=x.device)

    def _mm_to_voxels(self, field_mm: np.ndarray) -> np.ndarray:
        """(H, W, D, 3) displacement in mm along the array axes -> (3, H, W, D) in voxels."""
        sp = np.asarray(self.spacing, dtype=np.float32)
        return np.ascontiguousarray(np.moveaxis(field_mm.astype(np.float32) / sp, -1, 0))


class ANTsSyN(ClassicalRegistration):
    """
    ANTsPy SyN (symmetric normalisation) with Mattes mutual information.

    The arguments are those of ``ants.registration`` (their ANTsPy defaults, except ``reg_iterations``: ANTsPy's
    ``(40, 20, 0)`` skips the full-resolution level, here it runs 50 iterations); the composed
    affine + SyN forward transform is read back as one displacement field (``ants.apply_transforms(compose=)``).
    ANTs' points are physical (mm); the image is handed over with identity direction and zero origin, so the
    field's components lie along the array axes.

    Args:
        spacing, num_threads: see :class:`ClassicalRegistration`.
        type_of_transform: ``"SyNOnly"`` (deformable only, default, like the learned methods) or ``"SyN"``
            (affine stage first).
        metric: similarity of both stages (``"mattes"``: Mattes mutual information).
        sampling: histogram bins of the metric (ANTsPy ``syn_sampling`` / ``aff_sampling``).
        reg_iterations: SyN iterations per level, coarse to fine.
        grad_step, flow_sigma, total_sigma: SyN gradient step and smoothing of the update / total field (voxels).
        random_seed: ``ANTS_RANDOM_SEED`` for the affine stage's random sampling (reproducible results).
    """

    def __init__(
        self,
        spacing: float | Sequence[float] = 1.0,
        num_threads: int | None = None,
        type_of_transform: str = "SyNOnly",
        metric: str = "mattes",
        sampling: int = 32,
        reg_iterations: Sequence[int] = (100, 70, 50),
        grad_step: float = 0.2,
        flow_sigma: float = 3.0,
        total_sigma: float = 0.0,
        random_seed: int = 1,
    ) -> None:
        super().__init__(spacing, num_threads)
        import ants  # optional dependency: pip install antspyx

        self._ants = ants
        self.kwargs = dict(
            type_of_transform=type_of_transform,
            aff_metric=metric,
            aff_sampling=sampling,
            syn_metric=metric,
            syn_sampling=sampling,
            reg_iterations=tuple(int(i) for i in reg_iterations),
            grad_step=float(grad_step),
            flow_sigma=float(flow_sigma),
            total_sigma=float(total_sigma),
        )
        self.random_seed = int(random_seed)

    def register(self, moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        ants = self._ants
        os.environ["ANTS_RANDOM_SEED"] = str(self.random_seed)
        fix = ants.from_numpy(fixed.astype(np.float32), spacing=self.spacing)
        mov = ants.from_numpy(moving.astype(np.float32), spacing=self.spacing)
        with tempfile.TemporaryDirectory(prefix="mtreg_syn_") as tmp:
            reg = ants.registration(fix, mov, outprefix=os.path.join(tmp, "syn_"), **self.kwargs)
            composed = ants.apply_transforms(fix, mov, reg["fwdtransforms"], compose=os.path.join(tmp, "field_"))
            field = ants.image_read(composed).numpy()  # (H, W, D, 3), mm, components along the array axes
        return self._mm_to_voxels(field)


class ElastixBSpline(ClassicalRegistration):
    """
    elastix (``itk-elastix``) B-spline registration (optionally after an affine stage), advanced Mattes mutual
    information.

    The parameter maps are elastix's defaults for ``"affine"`` and ``"bspline"`` (the B-spline map also carries
    elastix's default bending-energy penalty, weight 1) with the settings below; the displacement is read back with
    transformix (``itk.transformix_deformation_field``).

    Args:
        spacing, num_threads: see :class:`ClassicalRegistration`.
        grid_spacing_mm: final B-spline control-point spacing in mm (elastix's default 10 mm gave Dice 0.52 on a
            64x64x48 phantom pair that starts at 0.80; 20 mm gave 0.77).
        num_resolutions: pyramid levels of both stages.
        max_iterations: optimiser iterations per level of both stages.
        use_affine: run elastix's default affine stage first (off by default: the learned methods are deformable
            only, and on a 64x64x48 phantom pair it lowered the Dice further).
        random_seed: elastix ``RandomSeed`` of the random-coordinate sampler.
    """

    def __init__(
        self,
        spacing: float | Sequence[float] = 1.0,
        num_threads: int | None = None,
        grid_spacing_mm: float = 20.0,
        num_resolutions: int = 3,
        max_iterations: int = 256,
        use_affine: bool = False,
        random_seed: int = 1,
    ) -> None:
        super().__init__(spacing, num_threads)
        import itk  # optional dependency: pip install itk-elastix

        self._itk = itk
        self.params = itk.ParameterObject.New()
        stages = (["affine"] if use_affine else []) + ["bspline"]
        for stage in stages:
            pm = self.params.GetDefaultParameterMap(stage, int(num_resolutions))
            pm["MaximumNumberOfIterations"] = [str(int(max_iterations))]
            pm["RandomSeed"] = [str(int(random_seed))]
            pm["WriteResultImage"] = ["false"]
            if stage == "bspline":
                pm["FinalGridSpacingInPhysicalUnits"] = [str(float(grid_spacing_mm))]
            self.params.AddParameterMap(pm)

    def _image(self, arr: np.ndarray):
        # itk arrays are (z, y, x): reverse the axes so that ITK's x is array axis 0
        img = self._itk.GetImageFromArray(np.ascontiguousarray(arr.astype(np.float32).transpose(2, 1, 0)))
        img.SetSpacing([float(s) for s in self.spacing])
        return img

    def register(self, moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        itk = self._itk
        fix, mov = self._image(fixed), self._image(moving)
        with tempfile.TemporaryDirectory(prefix="mtreg_elastix_") as tmp:
            _, result = itk.elastix_registration_method(
                fix, mov, parameter_object=self.params, log_to_console=False, output_directory=tmp
            )
            field = itk.transformix_deformation_field(mov, result, output_directory=tmp)
        arr = itk.array_from_image(field)  # (D, W, H, 3), components (x, y, z) = array axes 0, 1, 2
        return self._mm_to_voxels(np.ascontiguousarray(arr.transpose(2, 1, 0, 3)))


def check_displacement_convention(
    method: torch.nn.Module, size: Sequence[int] = (48, 48, 40), shift: int = 2
) -> tuple[float, float, float]:
    """
    Register a textured blob image to a copy of itself moved by ``shift`` voxels, once along each axis, and return
    the mean displacement along the moved axis inside the blob for each of the three runs (each should be about
    ``+shift``: ``fixed(x) = moving(x + shift)``).

    The test checks the convention, not the accuracy: a wrong axis order, sign or unit (mm instead of voxels, or
    the voxel sizes applied to the wrong axes) moves a mean far outside the accepted range, an under-registration
    (elastix's B-spline recovers 50-70 % of a 2-voxel shift of this image at 2.75-5.5 mm voxels, and a pure
    translation exactly) does not. Use an anisotropic ``spacing`` in the method to catch per-axis unit errors.

    Raises:
        RuntimeError: when, for any axis, the mean displacement along it is not within [0.25, 1.5] x ``shift`` or
        the other two axes move by more than 0.5 voxel.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in size], indexing="ij"))
    scale = np.asarray(size, dtype=np.float32)[:, None, None, None]
    r2 = (((grid - scale / 2) / (scale / 5)) ** 2).sum(0)
    moving = np.exp(-r2) + 0.5 * np.exp(-4 * r2)
    for axis, period in enumerate((3.0, 4.0, 5.0)):  # texture along every axis, so each one is constrained
        moving += 0.3 * np.sin(grid[axis] / period) * np.exp(-r2 / 4)
    inside = np.exp(-r2) > 0.3
    recovered = []
    for axis in range(3):
        fixed = np.roll(moving, -shift, axis=axis)  # fixed(x) = moving(x + shift e_axis)
        x = torch.as_tensor(np.stack([moving, fixed])[None], dtype=torch.float32)
        with torch.no_grad():
            ddf = method(x)[0].numpy()
        means = [float(ddf[c][inside].mean()) for c in range(3)]
        others = [means[c] for c in range(3) if c != axis]
        if not 0.25 * shift <= means[axis] <= 1.5 * shift or max(abs(m) for m in others) > 0.5:
            expected = tuple(float(shift) if c == axis else 0.0 for c in range(3))
            raise RuntimeError(
                f"{type(method).__name__}: expected a mean displacement of {expected} voxels in the blob, "
                f"got {tuple(round(m, 3) for m in means)}: check the wrapper's axis order, sign and units."
            )
        recovered.append(means[axis])
    return tuple(recovered)  # type: ignore[return-value]
