from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
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


def test_refine_steps(trained_bundle, tmp_path, capsys):
    """``--refine_steps N`` changes the displacement the network alone gives, without folding it."""
    pair = _phantom_pair(trained_bundle)
    fields = {}
    for steps in (0, 3):
        status = main(
            [
                "--fixed", pair["fixed_image"], "--moving", pair["moving_image"], "--out", str(tmp_path / f"r{steps}"),
                "--checkpoint", str(trained_bundle / "models" / "model.pt"), "--device", "cpu",
                "--refine_steps", str(steps),
            ]
        )  # fmt: skip
        assert status == 0
        result = Path(capsys.readouterr().out.strip().splitlines()[-1])
        fields[steps] = sitk.GetArrayFromImage(sitk.ReadImage(str(result / "ddf.nii.gz")))
        with open(tmp_path / f"r{steps}" / "quality_control.csv") as f:
            assert float(next(csv.DictReader(f))["folding_percent"]) == 0.0
    assert fields[0].shape == fields[3].shape and np.isfinite(fields[3]).all()
    assert np.abs(fields[3] - fields[0]).max() > 1e-3
    assert main(["--fixed", "f", "--moving", "m", "--out", str(tmp_path / "x"), "--refine_steps", "-1"]) == 2


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    status = main(
        ["--fixed", str(tmp_path / "nope.nii.gz"), "--moving", str(tmp_path / "x.nii.gz"), "--out", str(tmp_path)]
    )
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


def _bad_case(case: str, pair: dict, tmp_path: Path) -> dict:
    """The pair with one file replaced by a broken or unusual one."""
    import gzip

    import nibabel as nib
    import numpy as np

    img = nib.load(pair["moving_image"])
    data, affine = np.asarray(img.dataobj).astype(np.float32), img.affine
    out = dict(pair)
    path = tmp_path / f"{case}.nii.gz"
    if case == "truncated":
        raw = gzip.compress(nib.Nifti1Image(data, affine).to_bytes())
        path.write_bytes(raw[: len(raw) // 2])
    elif case == "flat2d":
        nib.save(nib.Nifti1Image(data[:, :, 0], affine), str(path))
    elif case == "vol4d":
        nib.save(nib.Nifti1Image(np.stack([data, data], -1), affine), str(path))
    elif case == "fraclabel":
        label = np.asarray(nib.load(pair["moving_label"]).dataobj).astype(np.float32) + 0.5
        nib.save(nib.Nifti1Image(label, affine), str(path))
        out["moving_label"] = str(path)
        return out
    elif case == "constant":
        nib.save(nib.Nifti1Image(np.full_like(data, 40.0), affine), str(path))
    elif case == "shifted_grid":  # another voxel size and origin: resampled onto the fixed grid, not refused
        nib.save(nib.Nifti1Image(data[::2, ::2, ::2], affine @ np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    out["moving_image"] = str(path)
    return out


# case -> text expected in the error (exit status 2), or None: registered (exit status 0)
REGISTER_CASES = {
    "truncated": "Could not read",
    "flat2d": "2 spatial dims",
    "vol4d": "2 channels",
    "fraclabel": "non-integer",
    "constant": "is (nearly) constant",
    "shifted_grid": None,
}


@pytest.mark.parametrize("case", sorted(REGISTER_CASES))
def test_bad_and_unusual_inputs(trained_bundle, tmp_path, capsys, case):
    item = _bad_case(case, _phantom_pair(trained_bundle), tmp_path)
    argv = ["--fixed", item["fixed_image"], "--moving", item["moving_image"], "--moving-label", item["moving_label"],
            "--out", str(tmp_path / "out"), "--bundle", str(ROOT / "bundle"),
            "--checkpoint", str(trained_bundle / "models" / "model.pt")]  # fmt: skip
    status = main(argv)
    captured = capsys.readouterr()
    expected = REGISTER_CASES[case]
    if expected is None:
        assert status == 0, captured.err
        result = Path(captured.out.strip().splitlines()[-1])
        field = sitk.GetArrayFromImage(sitk.ReadImage(str(result / "ddf.nii.gz")))
        assert np.isfinite(field).all()
    else:
        assert status == 2
        assert (
            expected in captured.err
            and Path(item["moving_image"] if case != "fraclabel" else item["moving_label"]).name in captured.err
        )
        assert not any(p.is_dir() for p in (tmp_path / "out").iterdir())


def test_bundle_failing_the_property_check_is_refused(tmp_path):
    """MONAI's infer workflow, its type set, checks the bundle: an inference.json without ``inferer`` is refused."""
    import shutil

    from mtreg_monai.apps import register_pair

    configs = tmp_path / "bundle" / "configs"
    shutil.copytree(ROOT / "bundle" / "configs", configs)
    config = json.loads((configs / "inference.json").read_text())
    del config["inferer"]
    config["evaluator"]["inferer"] = "$monai.inferers.SimpleInferer()"
    (configs / "inference.json").write_text(json.dumps(config))
    for name in ("mr.nii.gz", "ct.nii.gz", "model.pt"):  # never read: the check comes first
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(RuntimeError, match="property check.*inferer"):
        register_pair(str(tmp_path / "mr.nii.gz"), str(tmp_path / "ct.nii.gz"), str(tmp_path / "out"),
                      bundle_dir=tmp_path / "bundle", checkpoint=str(tmp_path / "model.pt"))  # fmt: skip
