"""Learn2Reg dataset JSON -> our datalist, on a tiny fake copy of the AbdomenMRCT layout built in tmp_path."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mtreg_monai.data import (
    convert_learn2reg_datalist,
    is_learn2reg_datalist,
    load_registration_datalist,
    resolve_datalist,
)
from mtreg_monai.transforms import registration_pair_transforms

ROOT = Path(__file__).resolve().parents[2]
SHAPE = (16, 16, 16)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
PAIRED = ("0001", "0002", "0003")  # cases with MR (_0000) and CT (_0001), labels and masks
MR_ONLY = "0004"  # an unpaired MR scan, like the CHAOS scans of the real release
TEST_CASE = "0005"  # test pair in imagesTs/, no labels


def _name(case: str, mod: int) -> str:
    return f"AbdomenMRCT_{case}_{mod:04d}.nii.gz"


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, AFFINE), str(path))


def _make_layout(root: Path) -> Path:
    """Images, labels (1 liver, 2 spleen, 3 right kidney, 4 left kidney) and masks of the fake dataset."""
    rng = np.random.default_rng(0)
    label = np.zeros(SHAPE, np.uint8)
    label[2:7, 2:7, 2:7], label[9:14, 2:7, 2:7], label[2:6, 9:14, 9:14], label[9:13, 9:14, 9:14] = 1, 2, 3, 4
    files = [(c, m, True) for c in PAIRED for m in (0, 1)] + [(MR_ONLY, 0, True)]
    for case, mod, labelled in files:
        image = rng.uniform(0, 800, SHAPE) if mod == 0 else rng.uniform(-1000, 300, SHAPE)  # MR units; CT in HU
        _save(root / "imagesTr" / _name(case, mod), image.astype(np.float32))
        if labelled:
            _save(root / "labelsTr" / _name(case, mod), label)
            _save(root / "masksTr" / _name(case, mod), (label > 0).astype(np.uint8))
    for mod in (0, 1):
        test_image = rng.uniform(0, 500, SHAPE) if mod == 0 else rng.uniform(-1000, 300, SHAPE)
        _save(root / "imagesTs" / _name(TEST_CASE, mod), test_image.astype(np.float32))
    return root


def _entry(case: str, mod: int, label: bool = True) -> dict[str, str]:
    entry = {"image": f"./imagesTr/{_name(case, mod)}", "mask": f"./masksTr/{_name(case, mod)}"}
    if label:
        entry["label"] = f"./labelsTr/{_name(case, mod)}"
    return entry


def _pair(case: str, folder: str = "imagesTr") -> dict[str, str]:
    return {"fixed": f"./{folder}/{_name(case, 0)}", "moving": f"./{folder}/{_name(case, 1)}"}


def _dataset_json(root: Path, variant: str = "paired", **changes) -> Path:
    """A Learn2Reg dataset JSON with the real keys; ``variant``: ``paired`` (with training_paired_images),
    ``flat`` (per-file training list only; case 0003 without label entries) or ``by_modality``
    (training grouped {"0": [...], "1": [...]} without label entries)."""
    cases = PAIRED + (MR_ONLY,)
    content = {
        "name": "AbdomenMRCT",
        "release": "1.0",
        "pairings": "hybrid",
        "provided_data": {"0": ["image", "label", "mask"], "1": ["image", "label", "mask"]},
        "registration_direction": {"fixed": 0, "moving": 1},
        "modality": {"0": "MR", "1": "CT"},
        "tensorImageSize": {"0": "3D"},
        "tensorImageShape": {"0": list(SHAPE)},
        "labels": {"0": {"1": "liver", "2": "spleen", "3": "right kidney", "4": "left kidney"}},
        "numTraining": 7,
        "training": [
            _entry(c, m, label=c != "0003" or variant != "flat")
            for c in cases
            for m in (0, 1)
            if (c, m) != (MR_ONLY, 1)
        ],
        "registration_val": [_pair("0003")],
        "registration_test": [_pair(TEST_CASE, "imagesTs")],
    }
    if variant == "paired":
        content["numPairedTraining"] = len(PAIRED)
        content["training_paired_images"] = [_pair(c) for c in PAIRED]
    elif variant == "by_modality":
        content["training"] = {
            str(m): [{"image": e["image"]} for e in content["training"] if e["image"].endswith(f"_{m:04d}.nii.gz")]
            for m in (0, 1)
        }
    content.update(changes)
    content = {k: v for k, v in content.items() if v is not None}
    path = root / "AbdomenMRCT_dataset.json"
    path.write_text(json.dumps(content, indent=4))
    return path


def _expected(root: Path, case: str, folder: str = "imagesTr", labels: bool = True, swap: bool = False) -> dict:
    mods = (1, 0) if swap else (0, 1)
    item = {
        "fixed_image": str(root / folder / _name(case, mods[0])),
        "moving_image": str(root / folder / _name(case, mods[1])),
        "id": f"AbdomenMRCT_{case}",
    }
    if labels:
        item["fixed_label"] = str(root / "labelsTr" / _name(case, mods[0]))
        item["moving_label"] = str(root / "labelsTr" / _name(case, mods[1]))
    return item


@pytest.fixture
def layout(tmp_path) -> Path:
    return _make_layout(tmp_path / "AbdomenMRCT")


@pytest.mark.parametrize("variant", ["paired", "flat", "by_modality"])
def test_convert(layout, tmp_path, variant):
    out = tmp_path / "out" / "datalist.json"
    datalist = convert_learn2reg_datalist(_dataset_json(layout, variant), out)
    root = Path(os.path.abspath(layout))
    # case 0003 is the validation pair, so it leaves training; 0004 (MR only) makes no pair
    assert datalist["training"] == [_expected(root, "0001"), _expected(root, "0002")]
    assert datalist["validation"] == [_expected(root, "0003")]
    assert datalist["test"] == [_expected(root, TEST_CASE, "imagesTs", labels=False)]
    assert datalist["modality"] == {"fixed": "MR", "moving": "CT"}
    assert json.loads(out.read_text()) == datalist
    assert os.listdir(out.parent) == ["datalist.json"]  # atomic write: no temporary file left
    # the package's reader accepts the result, labels required where the bundle requires them
    for section in ("training", "validation"):
        assert load_registration_datalist(out, section, check_files=True) == datalist[section]
    assert load_registration_datalist(out, "test", require_labels=False, check_files=True) == datalist["test"]


def test_keep_eval_and_num_val(layout):
    path = _dataset_json(layout)
    root = Path(os.path.abspath(layout))
    kept = convert_learn2reg_datalist(path, keep_eval_in_training=True)
    assert [i["id"] for i in kept["training"]] == ["AbdomenMRCT_0001", "AbdomenMRCT_0002", "AbdomenMRCT_0003"]
    split = convert_learn2reg_datalist(path, num_val=1)
    assert split["training"] == [_expected(root, "0001")]
    assert split["validation"] == [_expected(root, "0003"), _expected(root, "0002")]


@pytest.mark.parametrize(
    "kwargs, changes",
    [
        ({"fixed_modality": "CT", "moving_modality": "mr"}, {}),  # names of the JSON's 'modality', any case
        ({"fixed_modality": "0001", "moving_modality": 0}, {}),  # suffix string and int index
        ({}, {"registration_direction": {"fixed": "1", "moving": "0"}}),  # the JSON's direction, as strings
    ],
)
def test_direction(layout, kwargs, changes):
    datalist = convert_learn2reg_datalist(_dataset_json(layout, **changes), **kwargs)
    root = Path(os.path.abspath(layout))
    assert datalist["training"] == [_expected(root, "0001", swap=True), _expected(root, "0002", swap=True)]
    assert datalist["validation"] == [_expected(root, "0003", swap=True)]
    assert datalist["modality"] == {"fixed": "CT", "moving": "MR"}


def test_optional_keys_and_prefixes(layout):
    """No 'modality', 'registration_direction', 'registration_*' keys; paths without './'; entries as strings."""
    training = [f"imagesTr/{_name(c, m)}" for c in PAIRED for m in (0, 1)]
    path = _dataset_json(
        layout, "flat", training=training, modality=None, registration_direction=None,
        registration_val=None, registration_test=None,
    )  # fmt: skip
    datalist = convert_learn2reg_datalist(path)
    root = Path(os.path.abspath(layout))
    assert datalist["training"] == [_expected(root, c) for c in PAIRED]  # labels found in labelsTr/
    assert datalist["validation"] == [] and datalist["test"] == []
    assert datalist["modality"] == {"fixed": "0", "moving": "1"}


def test_transforms_load_converted_pair(layout, tmp_path):
    out = tmp_path / "datalist.json"
    convert_learn2reg_datalist(_dataset_json(layout), out)
    item = load_registration_datalist(out, "validation", check_files=True)[0]
    pair = registration_pair_transforms()(item)
    for key in ("fixed_image", "moving_image", "fixed_label", "moving_label"):
        assert tuple(pair[key].shape) == (1, *SHAPE), key
    assert sorted(np.unique(pair["fixed_label"].numpy()).tolist()) == [0, 1, 2, 3, 4]
    assert 0.0 <= float(pair["moving_image"].min()) and float(pair["moving_image"].max()) <= 1.0
    assert pair["id"] == "AbdomenMRCT_0003"
    # a test pair without labels loads too
    test_item = load_registration_datalist(out, "test", require_labels=False)[0]
    assert set(registration_pair_transforms()(test_item)) == {"fixed_image", "moving_image", "id"}


def test_resolve_datalist(layout, tmp_path):
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"training": [{"fixed_image": "a.nii.gz", "moving_image": "b.nii.gz"}], "test": []}))
    out_dir = tmp_path / "outputs"
    assert resolve_datalist(str(ours), str(out_dir)) == str(ours)
    assert not out_dir.exists()  # nothing written for a datalist already in our format
    assert not is_learn2reg_datalist(ours) and not is_learn2reg_datalist({"training": []})
    l2r = _dataset_json(layout)
    assert is_learn2reg_datalist(l2r) and is_learn2reg_datalist(json.loads(l2r.read_text()))
    resolved = resolve_datalist(str(l2r), str(out_dir))
    assert resolved == os.path.join(str(out_dir), "datalist_learn2reg.json")
    assert len(load_registration_datalist(resolved, "training", check_files=True)) == 2
    assert resolve_datalist(resolved, str(out_dir)) == resolved  # the converted file is ours: unchanged
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"images": ["a.nii.gz"]}))
    with pytest.raises(ValueError, match=r"neither our datalist .* nor a Learn2Reg dataset JSON"):
        resolve_datalist(other, out_dir)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        resolve_datalist(tmp_path / "missing.json", out_dir)


X0, X2 = "./imagesTr/x_0000.nii.gz", "./imagesTr/x_0002.nii.gz"
ILL = [
    ({"training": None, "training_paired_images": None}, {}, "has neither 'training_paired_images' nor 'training'"),
    ({"registration_val": [{"fixed": X0}]}, {}, r"key 'registration_val', item 0 is missing key 'moving'"),
    ({"registration_test": {"fixed": X0}}, {}, r"key 'registration_test' must be a list"),
    ({"training_paired_images": [{"fixed": "", "moving": X0}]}, {}, r"item 0, key 'fixed' must be a non-empty path"),
    ({"training_paired_images": [{"fixed": "../x_0000.nii.gz", "moving": X0}]}, {}, "outside the dataset folder"),
    ({"training": [{"mask": "./masksTr/a.nii.gz"}]}, {}, r"key 'training', item 0 must be an object with key 'image'"),
    ({}, {"fixed_modality": "PET"}, r"fixed_modality 'PET' is not a modality of dataset JSON .*AbdomenMRCT_dataset"),
    ({}, {"moving_modality": 7}, r"moving_modality 7 is not a modality of dataset JSON"),
    ({"registration_direction": {"fixed": 0, "moving": 5}}, {}, r"moving_modality 5 is not a modality"),
    ({}, {"fixed_modality": 1, "moving_modality": "CT"}, "must differ"),
    ({"training_paired_images": [{"fixed": X0, "moving": X2}]}, {}, r"pairs modalities 0 -> 2"),
    ({}, {"num_val": 2}, r"num_val=2 must leave at least one training pair"),
    ({}, {"num_val": -1}, "num_val must be None or an int"),
]


@pytest.mark.parametrize("changes, kwargs, match", ILL)
def test_ill_input(layout, changes, kwargs, match):
    path = _dataset_json(layout, **changes)
    with pytest.raises(ValueError, match=match):
        convert_learn2reg_datalist(path, **kwargs)


def test_ill_files(layout, tmp_path, caplog):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json' is not valid JSON"):
        convert_learn2reg_datalist(bad)
    with pytest.raises(TypeError, match="must be a str or os.PathLike"):
        convert_learn2reg_datalist(3)
    os.remove(layout / "imagesTr" / _name("0002", 1))
    path = _dataset_json(layout)
    with pytest.raises(FileNotFoundError, match=r"training pair 1: image file not found: '.*AbdomenMRCT_0002_0001"):
        convert_learn2reg_datalist(path)
    assert len(convert_learn2reg_datalist(path, check_files=False)["training"]) == 2
    # missing test images (shipped separately by Learn2Reg): the pair is dropped with a warning
    os.remove(layout / "imagesTs" / _name(TEST_CASE, 0))
    path = _dataset_json(layout, training_paired_images=[_pair("0001")])
    with caplog.at_level(logging.WARNING, logger="mtreg_monai.data.learn2reg"):
        assert convert_learn2reg_datalist(path)["test"] == []
    assert "dropped 1 of 1 test pairs" in caplog.text and "images missing" in caplog.text


def test_bundle_trains_on_learn2reg_json(layout, tmp_path):
    """The training bundle, pointed at the Learn2Reg JSON through the one ``datalist`` value."""
    from monai.bundle import ConfigWorkflow

    configs = ROOT / "bundle" / "configs"
    wf = ConfigWorkflow(
        config_file=str(configs / "train.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        run_id="training",
        bundle_root=str(tmp_path / "bundle"),
        datalist=str(_dataset_json(layout)),
        # the line proposed for train.json (set here so that the test does not depend on that edit)
        datalist_file="$mtreg_monai.data.resolve_datalist(@datalist, @output_dir) if @datalist else ''",
        spatial_size=list(SHAPE),
        method="vm",
        epochs=1,
        val_interval=1,
        **{
            "network_def#encoder_channels": [4, 8, 8, 8],
            "network_def#decoder_channels": [8, 8, 8, 8],
            "network_def#refine_channels": [8],
            "network_def#final_channels": [4, 4],
        },
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (tmp_path / "bundle" / "outputs" / "datalist_learn2reg.json").is_file()
    assert (tmp_path / "bundle" / "models" / "model_final.pt").is_file()
