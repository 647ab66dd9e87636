"""FailSafeDataset and fail_safe_collate: a bad pair becomes a failure marker naming its file and the problem."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from mtreg_monai.data import FailSafeDataset, exception_reason, fail_safe_collate, failure_marker, is_failure_marker
from mtreg_monai.transforms import registration_pair_transforms


def _save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.eye(4) if affine is None else affine), str(path))
    return str(path)


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    good = rng.uniform(0, 100, (16, 16, 16))
    paths = {
        "fixed": _save(tmp_path / "fixed.nii.gz", good),
        "moving": _save(tmp_path / "moving.nii.gz", good[::-1]),
        "2d": _save(tmp_path / "flat.nii.gz", good[:, :, 0]),
        "nan": _save(tmp_path / "nan.nii.gz", np.where(good > 90, np.nan, good)),
    }
    raw = open(paths["moving"], "rb").read()
    (tmp_path / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    paths["truncated"] = str(tmp_path / "truncated.nii.gz")
    paths["missing"] = str(tmp_path / "missing.nii.gz")
    return paths


# (case, expected exception type in the reason, text expected in the reason)
CASES = [
    ("missing", "FileNotFoundError", "not found"),
    ("truncated", "ValueError", "Compressed file ended"),
    ("2d", "ValueError", "2 spatial dims"),
    ("nan", "ValueError", "non-finite"),
]


@pytest.mark.parametrize("case,exc_type,text", CASES)
def test_bad_pair_becomes_marker(files, case, exc_type, text):
    data = [
        {"fixed_image": files["fixed"], "moving_image": files[case]},
        {"fixed_image": files["fixed"], "moving_image": files["moving"]},
    ]
    ds = FailSafeDataset(data, transform=registration_pair_transforms(with_labels=False))
    marker = ds[0]
    assert is_failure_marker(marker)
    assert (
        marker["stage"] == "load" and marker["fixed_image"] == files["fixed"] and marker["moving_image"] == files[case]
    )
    assert marker["reason"].startswith(f"{exc_type}: ")
    assert text in marker["reason"] and files[case] in marker["reason"]  # names the file and the problem
    assert "\n" not in marker["reason"]
    good = ds[1]
    assert not is_failure_marker(good) and good["moving_image"].shape == (1, 16, 16, 16)


def test_collate_mixed_and_failed_only(files):
    ds = FailSafeDataset(
        [{"fixed_image": files["fixed"], "moving_image": files[k]} for k in ("moving", "missing", "moving")],
        transform=registration_pair_transforms(with_labels=False),
    )
    batch = fail_safe_collate([ds[0], ds[1], ds[2]])
    assert batch["fixed_image"].shape == (2, 1, 16, 16, 16)
    assert len(batch["failed"]) == 1 and batch["failed"][0]["moving_image"] == files["missing"]
    assert set(fail_safe_collate([ds[1]])) == {"failed"}
    assert "failed" not in fail_safe_collate([ds[0]])
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=fail_safe_collate)
    assert [set(b) == {"failed"} for b in loader] == [False, True, False]


def test_reason_unwraps_monai_wrapper():
    try:
        try:
            raise ValueError("'moving_image' (file 'a.nii.gz') is bad")
        except ValueError as e:
            raise RuntimeError("applying transform <X>") from e
    except RuntimeError as e:
        assert exception_reason(e) == "ValueError: 'moving_image' (file 'a.nii.gz') is bad"
    assert exception_reason(KeyError("x")) == "KeyError: 'x'"
    assert exception_reason(RuntimeError("applying transform <X>")) == "RuntimeError: applying transform <X>"


def test_marker_and_ill_args():
    m = failure_marker({"fixed_image": "f", "moving_image": "m", "extra": 1}, "boom", stage="write")
    assert m == {"failed": True, "stage": "write", "reason": "boom", "fixed_image": "f", "moving_image": "m"}
    assert failure_marker("not a dict", "x")["fixed_image"] == ""
    assert not is_failure_marker({"failed": 1}) and not is_failure_marker(None)
    with pytest.raises(TypeError, match="data must be a sequence"):
        FailSafeDataset("pairs.json")


def test_keyboard_interrupt_propagates():
    def stop(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FailSafeDataset([{}], transform=stop)[0]
