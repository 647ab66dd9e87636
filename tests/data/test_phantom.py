from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from monai.networks.blocks import Warp
from monai.transforms import LoadImaged

from mtreg_monai.data import ORGAN_LABELS, TISSUES, make_phantom_dataset, make_phantom_pair
from mtreg_monai.data.phantom import PHANTOM_PRESETS

SIZE = (48, 48, 32)
FOV = (176.0, 176.0, 128.0)
# paper's initial Dice (%) before registration and the tolerance for a 4-pair mean at 48x48x32
TARGET_DICE = {1: 76.0, 2: 78.0, 3: 80.0, 4: 80.0}
DICE_TOLERANCE = 8.0

INVALID_PAIR_ARGS = [
    ({"spatial_size": (32, 32)}, "spatial_size"),
    ({"spatial_size": (32, 0, 24)}, "spatial_size"),
    ({"spatial_size": (32, -32, 24)}, "spatial_size"),
    ({"spatial_size": "32"}, "spatial_size"),
    ({"field_of_view": (176.0, 0.0, 128.0)}, "field_of_view"),
    ({"seed": -1}, "seed"),
    ({"breathing_amplitude": (12.0, 6.0)}, "breathing_amplitude"),
    ({"breathing_amplitude": (-1.0, 6.0)}, "breathing_amplitude"),
    ({"deformation_amplitude": -1.0}, "deformation_amplitude"),
    ({"ct_intensities": {"air": (-1000.0, 0.0)}}, "ct_intensities"),
]
INVALID_DATASET_ARGS = [
    ({"num_pairs": 0}, "num_pairs"),
    ({"num_pairs": 4, "num_val": 3, "num_test": 2}, "num_val \\+ num_test"),
    ({"num_pairs": 4, "num_val": -1}, "num_val"),
    ({"num_pairs": 4, "spatial_size": (16, 16, 0)}, "spatial_size"),
    ({"num_pairs": 4, "spatial_size": (16, 16, 16, 16)}, "spatial_size"),
    ({"num_pairs": 4, "seed": -3}, "seed"),
    ({"num_pairs": 4, "datalist_name": "../x.json"}, "datalist_name"),
]


def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    a, b = a == value, b == value
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def jacobian_determinant(ddf: np.ndarray) -> np.ndarray:
    """det(I + grad ddf) by central differences, ddf (3, H, W, D) in voxels."""
    grad = [np.gradient(ddf[i], axis=(0, 1, 2)) for i in range(3)]
    jac = np.stack([np.stack([grad[i][j] + (i == j) for j in range(3)], -1) for i in range(3)], -2)
    return np.linalg.det(jac)


@pytest.fixture(scope="module")
def pairs():
    return [make_phantom_pair(SIZE, seed=(0, i)) for i in range(4)]


def test_shape(pairs):
    p = pairs[0]
    for key in ("fixed_image", "moving_image"):
        assert p[key].shape == SIZE and p[key].dtype == np.float32
    for key in ("fixed_label", "moving_label", "fixed_tissue", "moving_tissue"):
        assert p[key].shape == SIZE and p[key].dtype == np.uint8
    for key in ("motion", "ddf"):
        assert p[key].shape == (3, *SIZE) and p[key].dtype == np.float32
    np.testing.assert_allclose(np.diag(p["affine"])[:3], np.array(FOV) / np.array(SIZE))
    assert nib.aff2axcodes(p["affine"]) == ("R", "A", "S")
    # the field of view is centred on the world origin
    centre = p["affine"] @ np.array([(n - 1) / 2 for n in SIZE] + [1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)


def test_determinism():
    a = make_phantom_pair((32, 32, 24), seed=5)
    b = make_phantom_pair((32, 32, 24), seed=5)
    c = make_phantom_pair((32, 32, 24), seed=6)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["fixed_image"], c["fixed_image"])
    assert not np.array_equal(a["fixed_label"], c["fixed_label"])
    assert not np.array_equal(a["motion"], c["motion"])


def test_labels(pairs):
    for p in pairs:
        for key in ("fixed_label", "moving_label"):
            assert set(np.unique(p[key]).tolist()) == {0, 1, 2, 3, 4}
        # labels are the organs of the tissue maps
        organs = ("liver", "liver_vessel", "spleen", "kidney_cortex", "kidney_medulla")
        organ_tissues = [TISSUES.index(t) for t in organs]
        assert np.isin(p["fixed_tissue"][p["fixed_label"] > 0], organ_tissues).all()
        # RAS: +x is the patient's right; liver and right kidney on the right, spleen and left kidney on the left
        x = np.arange(SIZE[0])[:, None, None]
        cx = {v: float((x * (p["fixed_label"] == v)).sum() / (p["fixed_label"] == v).sum()) for v in range(1, 5)}
        assert cx[ORGAN_LABELS["right_kidney"]] > SIZE[0] / 2 > cx[ORGAN_LABELS["left_kidney"]]
        assert cx[ORGAN_LABELS["liver"]] > SIZE[0] / 2 > cx[ORGAN_LABELS["spleen"]]


def test_initial_dice(pairs):
    scores = {v: np.mean([dice(p["fixed_label"], p["moving_label"], v) for p in pairs]) * 100 for v in range(1, 5)}
    for v, target in TARGET_DICE.items():
        assert abs(scores[v] - target) < DICE_TOLERANCE, (v, scores)


def test_motion_invertible(pairs):
    for p in pairs:
        assert jacobian_determinant(p["motion"]).min() > 0.3
        assert jacobian_determinant(p["ddf"]).min() > 0.3
        # motion is mostly cranio-caudal (axis 2) and vanishes at the spine (body centre, posterior)
        assert np.abs(p["motion"][2]).max() > np.abs(p["motion"][:2]).max()
    # the returned ddf is MONAI Warp's convention: warping the moving labels recovers the fixed ones
    warp = Warp(mode="nearest", padding_mode="border")
    for p in pairs[:2]:
        warped = warp(torch.from_numpy(p["moving_label"])[None, None].float(), torch.from_numpy(p["ddf"])[None])
        for v in range(1, 5):
            assert dice(warped[0, 0].numpy().astype(np.uint8), p["fixed_label"], v) > 0.95
            assert dice(p["moving_label"], p["fixed_label"], v) < 0.93


def test_non_monotonic_intensities(pairs):
    p = pairs[0]

    def mean(image, tissue, name):
        return float(image[tissue == TISSUES.index(name)].mean())

    mr = {t: mean(p["fixed_image"], p["fixed_tissue"], t) for t in ("subcutaneous_fat", "muscle", "liver", "spleen")}
    ct = {t: mean(p["moving_image"], p["moving_tissue"], t) for t in ("subcutaneous_fat", "muscle", "liver", "spleen")}
    assert mr["subcutaneous_fat"] > mr["muscle"] and ct["subcutaneous_fat"] < ct["muscle"]
    assert mr["spleen"] > mr["liver"] + 100 and abs(ct["spleen"] - ct["liver"]) < 20
    bone_mr = mean(p["fixed_image"], p["fixed_tissue"], "bone_cortical")
    bone_ct = mean(p["moving_image"], p["moving_tissue"], "bone_cortical")
    assert bone_ct > ct["muscle"] + 200 and bone_mr < mr["muscle"]
    # HU-like CT: air -1000, fat negative, soft tissue 30-70; MR magnitude is non-negative
    assert abs(float(np.median(p["moving_image"][p["moving_tissue"] == TISSUES.index("air")])) + 1000) < 5
    assert -130 < ct["subcutaneous_fat"] < -60 and 30 < ct["liver"] < 70
    assert p["fixed_image"].min() >= 0


def test_same_subject_across_sizes():
    small, large = make_phantom_pair((32, 32, 24), seed=2), make_phantom_pair(SIZE, seed=2)
    vox_small, vox_large = (np.prod(np.diag(p["affine"])[:3]) for p in (small, large))
    for v in range(1, 5):
        vol_small = (small["fixed_label"] == v).sum() * vox_small
        vol_large = (large["fixed_label"] == v).sum() * vox_large
        assert abs(vol_small / vol_large - 1) < 0.15, v


@pytest.mark.parametrize("kwargs, match", INVALID_PAIR_ARGS)
def test_ill_pair_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom_pair(**{"spatial_size": (16, 16, 16), **kwargs})


@pytest.mark.parametrize("kwargs, match", INVALID_DATASET_ARGS)
def test_ill_dataset_args(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom_dataset(tmp_path, **{"spatial_size": (16, 16, 16), **kwargs})
    assert not os.path.exists(tmp_path / "dataset.json")


def test_dataset(tmp_path):
    size = (32, 32, 24)
    path = make_phantom_dataset(tmp_path / "phantom", num_pairs=4, spatial_size=size, seed=3, num_val=1, num_test=1)
    assert path == os.path.join(tmp_path / "phantom", "dataset.json")
    with open(path) as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [2, 1, 1]
    keys = {"fixed_image", "moving_image", "fixed_label", "moving_label", "true_ddf"}
    items = datalist["training"] + datalist["validation"] + datalist["test"]
    assert all(set(item) == keys for item in items)
    root = os.path.dirname(path)
    for i, item in enumerate(items):
        pair = make_phantom_pair(size, seed=(3, i))
        for key, rel in item.items():
            assert not os.path.isabs(rel) and ".." not in rel
            image = nib.load(os.path.join(root, rel))
            np.testing.assert_allclose(image.header.get_zooms()[:3], np.array(FOV) / np.array(size), rtol=1e-6)
            np.testing.assert_allclose(image.affine, pair["affine"], atol=1e-5)
            data = np.asarray(image.dataobj)
            assert data.dtype == (np.uint8 if "label" in key else np.float32)
            expected = np.moveaxis(pair["ddf"], 0, -1) if key == "true_ddf" else pair[key]
            np.testing.assert_array_equal(data, expected)
    # MONAI's reader resolves the relative paths
    loaded = load_decathlon_datalist(path, data_list_key="validation", base_dir=root)
    assert os.path.isfile(loaded[0]["moving_image"])
    # MONAI's loader gives the true displacement channel-first, as the network outputs it
    true_ddf = LoadImaged("true_ddf", ensure_channel_first=True)(loaded[0])["true_ddf"]
    np.testing.assert_array_equal(np.asarray(true_ddf), make_phantom_pair(size, seed=(3, 2))["ddf"])


def test_default_split(tmp_path):
    path = make_phantom_dataset(tmp_path, num_pairs=16, spatial_size=(8, 8, 8))
    with open(path) as f:
        datalist = json.load(f)
    assert [len(datalist[k]) for k in ("training", "validation", "test")] == [12, 2, 2]


def test_reuse_existing(tmp_path):
    path = make_phantom_dataset(tmp_path, num_pairs=2, spatial_size=(16, 16, 16), seed=3, num_val=0, num_test=0)
    stamp = os.path.getmtime(path)
    again = make_phantom_dataset(
        tmp_path, num_pairs=2, spatial_size=(16, 16, 16), seed=3, num_val=0, num_test=0, reuse_existing=True
    )
    assert again == path and os.path.getmtime(path) == stamp  # nothing rewritten
    other = make_phantom_dataset(
        tmp_path, num_pairs=2, spatial_size=(16, 16, 16), seed=4, num_val=0, num_test=0, reuse_existing=True
    )
    with open(other) as f:
        assert json.load(f)["generator"]["seed"] == 4  # different arguments: regenerated


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    overlaps = [2 * ((a == v) & (b == v)).sum() / max((a == v).sum() + (b == v).sum(), 1) for v in (1, 2, 3, 4)]
    return float(np.mean(overlaps))


def test_easy_preset_is_the_default_generator():
    assert make_phantom_pair.__kwdefaults__ is None  # all defaults are positional-or-keyword
    p = make_phantom_pair((16, 16, 16), seed=5)
    q = make_phantom_pair((16, 16, 16), seed=5, **PHANTOM_PRESETS["easy"])
    for key in p:
        np.testing.assert_array_equal(p[key], q[key])


def test_hard_preset_is_harder_and_its_truth_holds():
    size, seeds = (48, 48, 32), [(0, i) for i in range(3)]
    easy = [make_phantom_pair(size, seed=s) for s in seeds]
    hard = [make_phantom_pair(size, seed=s, **PHANTOM_PRESETS["hard"]) for s in seeds]
    unregistered = {n: np.mean([_dice(p["moving_label"], p["fixed_label"]) for p in ps]) for n, ps in
                    (("easy", easy), ("hard", hard))}  # fmt: skip
    assert unregistered["hard"] < unregistered["easy"] - 0.08
    warp = Warp(mode="nearest", padding_mode="border")
    for p in hard:
        assert jacobian_determinant(p["ddf"]).min() > 0  # large, sliding motion, but no folding
        warped = warp(torch.from_numpy(p["moving_label"])[None, None].float(), torch.from_numpy(p["ddf"])[None])
        assert _dice(warped[0, 0].numpy(), p["fixed_label"]) > _dice(p["moving_label"], p["fixed_label"]) + 0.1


def test_sliding_motion_has_sharp_lateral_edges():
    """The hard preset's breathing shift changes across an organ's side within a few mm (a sliding boundary)."""
    kw = {k: v for k, v in PHANTOM_PRESETS["hard"].items() if k != "sliding"}
    size = (64, 64, 16)
    smooth = make_phantom_pair(size, seed=2, **kw)["motion"][2]
    sliding = make_phantom_pair(size, seed=2, **{**kw, "sliding": PHANTOM_PRESETS["hard"]["sliding"]})["motion"][2]
    lateral = [np.abs(np.diff(m, axis=a)).max() for m in (smooth, sliding) for a in (0, 1)]
    assert max(lateral[2:]) > 2 * max(lateral[:2])


@pytest.mark.parametrize("kwargs, match", [({"preset": "medium"}, "preset"), ({"wobble": 1.0}, "wobble"),
                                            ({"sliding": (1.0,)}, "sliding"), ({"texture_scale": -1.0}, "texture")])
def test_ill_preset_args(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom_dataset(tmp_path, num_pairs=1, spatial_size=(16, 16, 16), num_val=0, num_test=0, **kwargs)
