"""Batch inference with bad pairs: each is reported in failures.csv with its reason, the other pairs are registered."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.bundle import ConfigWorkflow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"


# case -> (key replaced, expected exception type, text in the reason); None: the pair must be registered
CASES = {
    "missing": ("moving_image", "FileNotFoundError", "not found"),
    "truncated": ("moving_image", "ValueError", "Compressed file ended before the end-of-stream marker"),
    "flat2d": ("moving_image", "ValueError", "2 spatial dims"),
    "vol4d": ("moving_image", "ValueError", "has 2 channels"),
    "nan": ("moving_image", "ValueError", "non-finite voxel"),
    "fraclabel": ("moving_label", "ValueError", "non-integer values"),
    "constant": ("moving_image", "ValueError", "is (nearly) constant"),  # never worth registering
    "zeros": ("moving_image", "ValueError", "is (nearly) constant"),
    "huge": ("moving_image", "ValueError", "at or above the CT window's upper bound"),  # int32 extremes: a mask
    "regrid": ("moving_image", None, None),  # other shape, spacing and origin: resampled onto the fixed grid
    "shortlabel": ("moving_label", None, None),  # label of another shape: resampled through its affine (transforms)
}


def _make_case(case: str, pair: dict, tmp: Path) -> dict:
    key = CASES[case][0]
    src = nib.load(pair[key])
    data, affine = np.asarray(src.dataobj).astype(np.float32), src.affine
    path = tmp / f"{case}.nii.gz"
    if key == "moving_label":  # a moving image of its own name, so that the pair has its own result folder
        image = tmp / f"{case}_image.nii.gz"
        image.write_bytes(Path(pair["moving_image"]).read_bytes())
        pair = dict(pair, moving_image=str(image))
    if case == "missing":
        return dict(pair, **{key: str(path)})
    if case == "truncated":
        raw = Path(pair[key]).read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        return dict(pair, **{key: str(path)})
    if case == "flat2d":
        data = data[:, :, data.shape[2] // 2]
    elif case == "vol4d":
        data = np.stack([data, data], axis=-1)
    elif case == "nan":
        data[2:4, 2:4, 2:4] = np.nan
    elif case == "fraclabel":
        data[data > 0] += 0.5
    elif case == "constant":
        data[:] = 40.0
    elif case == "zeros":
        data[:] = 0.0
    elif case == "huge":
        data = np.where(data > data.mean(), 2**31 - 1, -(2**31) + 1).astype(np.int32)
    elif case == "regrid":
        data = np.ascontiguousarray(data[2:30, 1:31, 4:28])
        affine = affine.copy()
        affine[:3, :3] *= 1.2
        affine[:3, 3] += 7.0
    elif case == "shortlabel":
        data = np.ascontiguousarray(data[:, :, :20]).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return dict(pair, **{key: str(path)})


def _stem(path: str) -> str:
    return Path(path).name[: -len(".nii.gz")]


@pytest.fixture(scope="module")
def batch_run(trained_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_pairs")
    (datalist,) = trained_bundle.rglob("dataset.json")
    phantom = json.loads(datalist.read_text())
    pairs = [
        {k: str(datalist.parent / v) for k, v in item.items() if k.endswith(("image", "label"))}
        for item in phantom["training"] + phantom["test"]
    ]
    base = pairs[-1]
    items = {case: _make_case(case, base, tmp) for case in CASES}
    test = [pairs[0], *items.values(), base]
    (tmp / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "test": test}))
    out = tmp / "out"
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        run_id="inference",
        workflow_type="infer",
        bundle_root=str(trained_bundle),
        datalist=str(tmp / "datalist.json"),
        infer_dir=str(out),
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"out": out, "items": items, "good": [pairs[0], base], "rows": rows, "wf": wf}


@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v[1] is not None])
def test_bad_pair_is_reported(batch_run, case):
    key, exc_type, text = CASES[case]
    item = batch_run["items"][case]
    (row,) = [r for r in batch_run["rows"] if item[key] in r["reason"]]  # the reason names the bad file
    assert row["stage"] == "load"
    assert row["fixed_image"] == item["fixed_image"] and row["moving_image"] == item["moving_image"]
    assert row["reason"].startswith(f"{exc_type}: ") and text in row["reason"]
    name = f"{_stem(item['moving_image'])}_to_{_stem(item['fixed_image'])}"
    assert not (batch_run["out"] / name).exists()  # nothing written for it, not even partially


@pytest.mark.parametrize("case", [c for c, v in CASES.items() if v[1] is None])
def test_degenerate_pair_is_registered(batch_run, case):
    item = batch_run["items"][case]
    assert not [
        r
        for r in batch_run["rows"]
        if r["moving_image"] == item["moving_image"] and item[CASES[case][0]] in r["reason"]
    ]
    pair_dir = batch_run["out"] / f"{_stem(item['moving_image'])}_to_{_stem(item['fixed_image'])}"
    assert {"ddf.nii.gz", "warped_moving.nii.gz", "warped_moving_label.nii.gz"} <= {p.name for p in pair_dir.iterdir()}
    fixed = sitk.ReadImage(item["fixed_image"])
    field = sitk.ReadImage(str(pair_dir / "ddf.nii.gz"))
    assert field.GetSize() == fixed.GetSize()  # on the fixed grid, whatever the moving grid
    assert np.isfinite(sitk.GetArrayFromImage(field)).all()
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(pair_dir / "warped_moving.nii.gz")))).all()


def test_run_goes_on(batch_run):
    out = batch_run["out"]
    n_bad = sum(v[1] is not None for v in CASES.values())
    assert len(batch_run["rows"]) == n_bad
    n_good = len(batch_run["good"]) + len(CASES) - n_bad
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == n_good
    assert not [p for p in out.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    for pair in batch_run["good"]:
        assert (out / f"{_stem(pair['moving_image'])}_to_{_stem(pair['fixed_image'])}" / "ddf.nii.gz").is_file()
    evaluator = batch_run["wf"].parser.get_parsed_content("evaluator")
    assert evaluator.state.iteration == len(CASES) + 2 and len(evaluator.state.failures) == n_bad
