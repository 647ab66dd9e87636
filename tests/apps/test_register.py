from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk

from mtreg_monai.apps import main

ROOT = Path(__file__).resolve().parents[2]


def _phantom_pair(trained_bundle: Path) -> dict:
    datalist = json.loads((trained_bundle / "outputs" / "phantom" / "dataset.json").read_text())
    base = trained_bundle / "outputs" / "phantom"
    return {k: str(base / v) for k, v in datalist["test"][0].items() if k.endswith(("image", "label"))}


def test_register_one_pair(trained_bundle, tmp_path, capsys):
    pair = _phantom_pair(trained_bundle)
    status = main(
        [
            "--fixed", pair["fixed_image"], "--moving", pair["moving_image"],
            "--moving-label", pair["moving_label"], "--out", str(tmp_path / "out"),
            "--bundle", str(ROOT / "bundle"), "--checkpoint", str(trained_bundle / "models" / "model.pt"),
            "--device", "cpu",
        ]
    )  # fmt: skip
    assert status == 0
    result = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert result.parent == tmp_path / "out"
    assert {p.name for p in result.iterdir()} == {"ddf.nii.gz", "warped_moving.nii.gz", "warped_moving_label.nii.gz"}
    warped = sitk.ReadImage(str(result / "warped_moving.nii.gz"))
    fixed = sitk.ReadImage(pair["fixed_image"])
    assert warped.GetSize() == fixed.GetSize() and warped.GetOrigin() == fixed.GetOrigin()
    # the moving CT's own intensities (HU), not the network's normalised ones
    assert sitk.GetArrayFromImage(warped).min() < -500


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    status = main(["--fixed", str(tmp_path / "nope.nii.gz"), "--moving", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path)])
    assert status == 2
    err = capsys.readouterr().err
    assert "fixed_image" in err and "nope.nii.gz" in err and "does not exist" in err


def test_invalid_image_is_a_clear_error(trained_bundle, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    pair = _phantom_pair(trained_bundle)
    bad = tmp_path / "nan_ct.nii.gz"
    img = nib.load(pair["moving_image"])
    data = np.asarray(img.dataobj).astype(np.float32)
    data[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(bad))
    status = main(
        ["--fixed", pair["fixed_image"], "--moving", str(bad), "--out", str(tmp_path / "out"),
         "--bundle", str(ROOT / "bundle"), "--checkpoint", str(trained_bundle / "models" / "model.pt")]
    )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err
    assert "nan_ct.nii.gz" in err and "non-finite" in err
    assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())  # no partial result folder
