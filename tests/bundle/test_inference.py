"""Inference bundle: results on the fixed image's original grid, in ITK's displacement convention."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigWorkflow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
SMALL_NET = json.loads((Path(__file__).parent / "small_network.json").read_text())  # a tiny network, for speed
TRAIN_SMALL = {"spatial_size": [32, 32, 32], "phantom#num_pairs": 4, "phantom#num_val": 1, "phantom#num_test": 1}


def _run(config_files, tmp_path: Path, run_id: str, **overrides) -> ConfigWorkflow:
    """``train.json`` alone as MONAI's train workflow, ``inference.json`` alone as its infer workflow (properties
    checked), or a list of files merged (no workflow type)."""
    single = isinstance(config_files, str)
    workflow_type = {"train.json": "train", "inference.json": "infer"}[config_files] if single else None
    files = [config_files] if single else config_files
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        run_id=run_id,
        workflow_type=workflow_type,
        bundle_root=str(tmp_path / "bundle"),
        phantom_dir=str(tmp_path / "phantom"),
        num_mc_samples=3,
        **SMALL_NET,
        **(TRAIN_SMALL if "train.json" in files else {}),
        **overrides,
    )
    wf.initialize()
    if workflow_type is not None:
        assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return wf


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
    _run("train.json", tmp_path, "training", epochs=2, val_interval=1, learning_rate=1e-3)
    return tmp_path


def _flip_to_lps(src: str, dst: str) -> None:
    """Same anatomy, stored with the first two array axes reversed and an LPS-style affine."""
    img = nib.load(src)
    data = np.asarray(img.dataobj)[::-1, ::-1, :]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = data.shape[0] - 1, data.shape[1] - 1
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), img.affine @ flip), dst)


def test_inference_writes_itk_field_on_fixed_grid(trained, tmp_path):
    wf = _run("inference.json", trained, "inference", mc_uncertainty=True, infer_dir=str(tmp_path / "out"))
    pairs = sorted(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert (tmp_path / "out" / "failures.csv").read_text().strip() == "fixed_image,moving_image,stage,reason"
    assert len(pairs) == 1  # one test pair
    files = {p.name for p in pairs[0].iterdir()}
    assert files == {
        "ddf.nii.gz",
        "warped_moving.nii.gz",
        "warped_moving_label.nii.gz",
        "uncertainty_phi.nii.gz",
        "uncertainty_image.nii.gz",
    }
    datalist = json.loads((trained / "phantom" / "dataset.json").read_text())
    item = {k: str(trained / "phantom" / v) for k, v in datalist["test"][0].items() if k.endswith(("image", "label"))}
    fixed = sitk.ReadImage(item["fixed_image"])
    field = sitk.ReadImage(str(pairs[0] / "ddf.nii.gz"))
    assert field.GetNumberOfComponentsPerPixel() == 3 and field.GetSize() == fixed.GetSize()
    assert np.allclose(field.GetOrigin(), fixed.GetOrigin()) and np.allclose(field.GetDirection(), fixed.GetDirection())
    # the evaluator's own warped label (nearest, on the network grid) agrees with ITK applying the written field
    evaluator = wf.parser.get_parsed_content("evaluator")
    ours = evaluator.state.output["warped_label"][0, 0].cpu().numpy()
    itk = sitk.GetArrayFromImage(sitk.ReadImage(str(pairs[0] / "warped_moving_label.nii.gz"))).transpose(2, 1, 0)
    agree = (ours == itk)[ours + itk > 0].mean()
    assert agree > 0.97
    # and the displacement is the network's, converted to mm: voxel size 176/32 = 5.5 mm along axis 0
    ddf_vox = evaluator.state.output["ddf"][0].cpu().numpy()
    u_lps = sitk.GetArrayFromImage(field).transpose(2, 1, 0, 3)
    np.testing.assert_allclose(-u_lps[..., 0], ddf_vox[0] * 176 / 32, rtol=1e-4, atol=1e-4)
    u = sitk.GetArrayFromImage(sitk.ReadImage(str(pairs[0] / "uncertainty_image.nii.gz")))
    assert np.isfinite(u).all() and u.max() > 0


def test_orientation_is_handled_by_affines(trained, tmp_path):
    """The same pair stored RAS and LPS gives the same registration, in world space."""
    datalist = json.loads((trained / "phantom" / "dataset.json").read_text())
    pair = {k: str(trained / "phantom" / v) for k, v in datalist["test"][0].items() if k.endswith(("image", "label"))}
    lps = {}
    for key, path in pair.items():
        lps[key] = str(tmp_path / f"lps_{key}.nii.gz")
        _flip_to_lps(path, lps[key])
    (tmp_path / "ras.json").write_text(json.dumps({"training": [], "validation": [], "test": [pair]}))
    (tmp_path / "lps.json").write_text(json.dumps({"training": [], "validation": [], "test": [lps]}))
    results = {}
    for name in ("ras", "lps"):
        out = tmp_path / f"out_{name}"
        _run("inference.json", trained, "inference", datalist=str(tmp_path / f"{name}.json"), infer_dir=str(out))
        (pair_dir,) = [p for p in out.iterdir() if p.is_dir()]
        warped = nib.as_closest_canonical(nib.load(str(pair_dir / "warped_moving.nii.gz")))
        field = sitk.ReadImage(str(pair_dir / "ddf.nii.gz"))
        results[name] = (np.asarray(warped.dataobj), warped.affine, sitk.GetArrayFromImage(field))
    np.testing.assert_allclose(results["ras"][1], results["lps"][1], atol=1e-4)
    np.testing.assert_allclose(results["ras"][0], results["lps"][0], atol=0.5)  # HU, float32 rounding
    # world-space vectors of the same physical voxels are the same (SimpleITK arrays flipped back)
    np.testing.assert_allclose(results["ras"][2], results["lps"][2][:, ::-1, ::-1], atol=1e-3)


def test_coarser_resolution_option_writes_on_the_original_grid(trained, tmp_path):
    """``infer_pixdim``: register at half the resolution (for images too large for memory), write on the fixed grid."""
    wf = _run("inference.json", trained, "inference", infer_pixdim=[11.0, 11.0, 8.0], infer_dir=str(tmp_path / "out"))
    evaluator = wf.parser.get_parsed_content("evaluator")
    assert tuple(evaluator.state.output["ddf"].shape[2:]) == (16, 16, 16)  # the network saw 32^3 at half resolution
    (pair_dir,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    datalist = json.loads((trained / "phantom" / "dataset.json").read_text())
    fixed = sitk.ReadImage(str(trained / "phantom" / datalist["test"][0]["fixed_image"]))
    for name in ("ddf.nii.gz", "warped_moving.nii.gz", "warped_moving_label.nii.gz"):
        out = sitk.ReadImage(str(pair_dir / name))
        assert out.GetSize() == fixed.GetSize() and np.allclose(out.GetSpacing(), fixed.GetSpacing())
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(pair_dir / "ddf.nii.gz")))).all()


def test_pairs_with_the_same_file_names_get_their_own_folders(trained, tmp_path):
    import shutil

    datalist = json.loads((trained / "phantom" / "dataset.json").read_text())
    base = trained / "phantom"
    items = []
    for case, src in (("case1", datalist["test"][0]), ("case2", datalist["training"][0])):
        (tmp_path / case).mkdir()
        item = {}
        for key in ("fixed_image", "moving_image"):
            dst = tmp_path / case / ("mr.nii.gz" if key == "fixed_image" else "ct.nii.gz")
            shutil.copy(base / src[key], dst)
            item[key] = str(dst)
        items.append(item)
    (tmp_path / "dup.json").write_text(json.dumps({"training": [], "validation": [], "test": items}))
    _run("inference.json", trained, "inference", datalist=str(tmp_path / "dup.json"), infer_dir=str(tmp_path / "out"))
    folders = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert folders == ["ct_to_mr", "ct_to_mr_2"]


def test_inferer_is_used_and_can_be_swapped(trained, tmp_path):
    """``inferer`` is what the evaluator calls: a sliding window of 16^3 gives another, full-size displacement."""
    ddfs = {}
    for name, inferer in (
        ("simple", None),
        ("window", {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "overlap": 0.5, "mode": "gaussian"}),
    ):
        extra = {} if inferer is None else {"inferer": inferer}
        wf = _run("inference.json", trained, "inference", infer_dir=str(tmp_path / name), **extra)
        evaluator = wf.parser.get_parsed_content("evaluator")
        assert evaluator.inferer is wf.parser.get_parsed_content("inferer")
        ddfs[name] = evaluator.state.output["ddf"]
    assert type(wf.parser.get_parsed_content("inferer")).__name__ == "SlidingWindowInferer"
    assert ddfs["window"].shape == ddfs["simple"].shape == (1, 3, 32, 32, 32)
    assert torch.isfinite(ddfs["window"]).all()
    assert not torch.allclose(ddfs["window"], ddfs["simple"])  # the windows saw less context: another field


def test_merged_with_train_json_still_works(trained, tmp_path):
    """The older command (train.json + inference.json merged) runs the same workflow: inference.json overrides."""
    wf = _run(["train.json", "inference.json"], trained, "inference", infer_dir=str(tmp_path / "out"))
    (pair_dir,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    assert (pair_dir / "ddf.nii.gz").is_file()
    assert wf.parser.get_parsed_content("evaluator").state.iteration == 1
