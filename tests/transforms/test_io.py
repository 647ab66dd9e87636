from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mtreg_monai.transforms import CheckedLoadImaged, nifti_voxel_count


@pytest.fixture
def nifti(tmp_path):
    path = tmp_path / "vol.nii.gz"
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.arange(16 * 16 * 16, dtype=np.float32).reshape(16, 16, 16), affine), path)
    return path


def test_load(nifti):
    out = CheckedLoadImaged(keys="img")({"img": str(nifti), "other": 1})
    assert out["img"].shape == (16, 16, 16) and out["img"].dtype == torch.float32 and out["other"] == 1
    np.testing.assert_allclose(out["img"].affine.numpy(), np.diag([1.5, 1.5, 2.0, 1.0]))
    assert nifti_voxel_count(nifti) == 4096
    assert nifti_voxel_count("image.png") is None


def test_truncated_names_path(nifti, tmp_path):
    cut = tmp_path / "cut.nii.gz"
    raw = nifti.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"Could not read 'img' from '.*cut\.nii\.gz'"):
        CheckedLoadImaged(keys="img")({"img": str(cut)})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"File of 'img' not found: '.*nope\.nii\.gz'"):
        CheckedLoadImaged(keys="img")({"img": str(tmp_path / "nope.nii.gz")})


def test_max_voxels(nifti):
    with pytest.raises(ValueError, match=r"declares 4096 voxels .* max_voxels=4095"):
        CheckedLoadImaged(keys="img", max_voxels=4095)({"img": str(nifti)})
    CheckedLoadImaged(keys="img", max_voxels=None)({"img": str(nifti)})
    with pytest.raises(ValueError, match="max_voxels must be positive"):
        CheckedLoadImaged(keys="img", max_voxels=0)


def test_meta_dict_mode(nifti):
    out = CheckedLoadImaged(keys="img", image_only=False)({"img": str(nifti)})
    assert out["img"].shape == (16, 16, 16) and "img_meta_dict" in out


def test_complex_image_refused(tmp_path):
    import nibabel as nib
    import numpy as np

    from mtreg_monai.transforms import CheckedLoadImaged

    path = tmp_path / "complex.nii.gz"
    nib.save(nib.Nifti1Image((np.ones((8, 8, 8)) * (1 + 2j)).astype(np.complex64), np.eye(4)), str(path))
    with pytest.raises(TypeError, match="complex"):
        CheckedLoadImaged("img")({"img": str(path)})
