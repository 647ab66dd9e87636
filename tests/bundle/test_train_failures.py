"""``monai.bundle run training`` on bad data ends with the clear error and exit status 1: never a SIGABRT (134),
never a training step on an image that does not fit its declared modality."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mtreg_monai.data import make_phantom_dataset

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
SMALL_NET = json.loads((Path(__file__).parent / "small_network.json").read_text())


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """A 32^3 phantom: 2 training pairs, 1 validation pair (absolute paths)."""
    out = tmp_path_factory.mktemp("phantom")
    made = make_phantom_dataset(out, num_pairs=3, spatial_size=(32, 32, 32), num_val=1, num_test=0)
    datalist = json.loads(Path(made).read_text())
    keys = ("fixed_image", "moving_image", "fixed_label", "moving_label")
    return {
        "dir": out,
        **{s: [{k: str(out / item[k]) for k in keys} for item in datalist[s]] for s in ("training", "validation")},
    }


def _corrupt(src: str, dst: Path) -> str:
    raw = Path(src).read_bytes()
    dst.write_bytes(raw[: len(raw) // 2])  # a truncated .nii.gz
    return str(dst)


def _unit_range(src: str, dst: Path) -> str:
    img = nib.load(src)
    mr = np.asarray(img.dataobj).astype(np.float32)
    nib.save(nib.Nifti1Image((mr - mr.min()) / (mr.max() - mr.min()), img.affine), str(dst))  # MR scaled to [0, 1]
    return str(dst)


def _case(case: str, phantom: dict, tmp: Path) -> tuple[dict, str]:
    """The datalist of a case and the text the error must contain."""
    train = [dict(p) for p in phantom["training"]]
    val = [dict(p) for p in phantom["validation"]]
    if case == "corrupt_training_image":
        train[1]["moving_image"] = bad = _corrupt(train[1]["moving_image"], tmp / "corrupt_ct.nii.gz")
        return {"training": train, "validation": val}, f"Could not read 'moving_image' from '{bad}'"
    if case == "corrupt_validation_image":
        val[0]["fixed_image"] = bad = _corrupt(val[0]["fixed_image"], tmp / "corrupt_mr.nii.gz")
        return {"training": train, "validation": val}, f"Could not read 'fixed_image' from '{bad}'"
    if case == "dotdot_missing":  # the datalist is in tmp/lists: '../' leads to tmp, where there is no such file
        train[0]["moving_label"] = "../nowhere/label.nii.gz"
        return {"training": train, "validation": val}, f"'{tmp / 'nowhere' / 'label.nii.gz'}'"
    if case == "empty_training":
        return {"training": [], "validation": val}, "Section 'training' of datalist"
    if case == "mr_unit_range_declared_ct":
        train[0]["moving_image"] = bad = _unit_range(train[0]["fixed_image"], tmp / "mr01.nii.gz")
        expected = f"'moving_image' (file '{bad}'), declared as CT, is (nearly) constant"
        return {"training": train, "validation": val}, expected
    raise AssertionError(case)


CASES = [
    "corrupt_training_image",
    "corrupt_validation_image",
    "dotdot_missing",
    "empty_training",
    "mr_unit_range_declared_ct",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_data_ends_with_the_error(tmp_path, phantom, case):
    datalist, expected = _case(case, phantom, tmp_path)
    folder = tmp_path / "lists"
    folder.mkdir()
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist))
    bundle_root = tmp_path / "bundle"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "train.json"),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(bundle_root), "--datalist", str(path),
        "--spatial_size", "[32,32,32]", "--epochs", "1", "--num_mc_samples", "2",
        *[a for k, v in SMALL_NET.items() for a in (f"--{k}", json.dumps(v))],
    ]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 134 and "terminate called" not in out, out[-3000:]  # no SIGABRT at exit
    assert proc.returncode == 1, out[-3000:]
    assert expected in out, out[-3000:]
    if case == "empty_training":
        assert "is empty; expected at least one pair" in out and str(path) in out
    if case == "mr_unit_range_declared_ct":
        assert "`--moving_modality mr`" in out
    assert not list((bundle_root / "models").glob("*.pt"))  # stopped before any training step: no checkpoint
