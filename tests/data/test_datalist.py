from __future__ import annotations

import json
import os

import pytest

from mtreg_monai.data.datalist import load_registration_datalist

PAIR = {
    "fixed_image": "imagesTr/p1_mr.nii.gz",
    "moving_image": "imagesTr/p1_ct.nii.gz",
    "fixed_label": "labelsTr/p1_mr.nii.gz",
    "moving_label": "labelsTr/p1_ct.nii.gz",
}


def _write(folder, content, name="dataset.json"):
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_read_relative_to_json_folder(tmp_path):
    path = _write(tmp_path, {"training": [dict(PAIR, id="p1")], "validation": [], "test": []})
    items = load_registration_datalist(path)
    assert len(items) == 1
    root = tmp_path.resolve()
    assert items[0]["fixed_image"] == str(root / "imagesTr" / "p1_mr.nii.gz")
    assert items[0]["moving_label"] == str(root / "labelsTr" / "p1_ct.nii.gz")
    assert items[0]["id"] == "p1"  # other keys copied
    assert load_registration_datalist(str(path), "validation") == []  # an empty section is accepted by default
    assert len(load_registration_datalist(path, allow_empty=False)) == 1


def test_base_dir_and_absolute(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    absolute = dict(PAIR, moving_image=str(data / "ct.nii.gz"))
    path = _write(tmp_path, {"training": [absolute, dict(PAIR, fixed_image="sub/../mr.nii.gz")]})
    items = load_registration_datalist(path, base_dir=data)
    assert items[0]["fixed_image"] == str(data.resolve() / "imagesTr" / "p1_mr.nii.gz")
    assert items[0]["moving_image"] == str(data.resolve() / "ct.nii.gz")  # absolute inside base_dir: accepted
    assert items[1]["fixed_image"] == str(data.resolve() / "mr.nii.gz")  # '..' that stays inside: accepted
    # without base_dir, absolute paths anywhere are accepted
    elsewhere = _write(tmp_path, {"training": [dict(PAIR, moving_image="/elsewhere/ct.nii.gz")]}, "b.json")
    assert load_registration_datalist(elsewhere)[0]["moving_image"] == os.path.normpath("/elsewhere/ct.nii.gz")


def test_labels_optional(tmp_path):
    pair = {"fixed_image": "mr.nii.gz", "moving_image": "ct.nii.gz", "moving_label": None}
    path = _write(tmp_path, {"test": [pair]})
    items = load_registration_datalist(path, "test", require_labels=False)
    assert set(items[0]) == {"fixed_image", "moving_image"}
    with pytest.raises(ValueError, match=r"section 'test', item 0 is missing key 'fixed_label'"):
        load_registration_datalist(path, "test")


def test_check_files(tmp_path):
    path = _write(tmp_path, {"training": [PAIR]})
    with pytest.raises(FileNotFoundError, match=r"item 0, key 'fixed_image': file not found: '.*p1_mr\.nii\.gz'"):
        load_registration_datalist(path, check_files=True)
    for rel in PAIR.values():
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert len(load_registration_datalist(path, check_files=True)) == 1


ILL_CONTENT = [
    # (JSON content, kwargs, exception, message)
    ('{"training": [', {}, ValueError, r"Datalist '.*dataset\.json' is not valid JSON"),
    ("[1, 2]", {}, ValueError, r"Datalist '.*dataset\.json' must hold a JSON object"),
    ({"validation": []}, {}, ValueError, r"Datalist '.*dataset\.json' has no section 'training'; sections present"),
    ({"training": {"a": 1}}, {}, ValueError, "Section 'training' of datalist .* must be a list"),
    ({"training": ["a.nii.gz"]}, {}, ValueError, "item 0 must be a JSON object"),
    (
        {"training": [PAIR, {k: v for k, v in PAIR.items() if k != "moving_image"}]},
        {},
        ValueError,
        r"datalist '.*dataset\.json', section 'training', item 1 is missing key 'moving_image'",
    ),
    ({"training": [dict(PAIR, fixed_image=3)]}, {}, ValueError, r"item 0, key 'fixed_image' must be a path string"),
    ({"training": [dict(PAIR, fixed_label=None)]}, {}, ValueError, "item 0, key 'fixed_label' must be a path string"),
    ({"training": [dict(PAIR, moving_label=" ")]}, {}, ValueError, "item 0, key 'moving_label' is an empty path"),
    (
        {"training": [dict(PAIR, moving_image="../../etc/passwd")]},
        {"base_dir": "."},
        ValueError,
        r"item 0, key 'moving_image': path '\.\./\.\./etc/passwd' resolves to .* outside base_dir",
    ),
    (
        {"training": [dict(PAIR, fixed_image="/etc/passwd")]},
        {"base_dir": "."},
        ValueError,
        r"key 'fixed_image': path '/etc/passwd' resolves to .* outside base_dir",
    ),
    (
        {"training": [], "test": [PAIR]},
        {"allow_empty": False},
        ValueError,
        r"Section 'training' of datalist '.*dataset\.json' is empty; expected at least one pair",
    ),
]


@pytest.mark.parametrize("content, kwargs, exc, match", ILL_CONTENT)
def test_ill_datalist(tmp_path, content, kwargs, exc, match):
    path = _write(tmp_path, content)
    if "base_dir" in kwargs:
        kwargs = {"base_dir": tmp_path}
    with pytest.raises(exc, match=match):
        load_registration_datalist(path, **kwargs)


def test_symlink_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    base = tmp_path / "base"
    base.mkdir()
    try:
        (base / "link").symlink_to(outside, target_is_directory=True)
    except OSError:
        pytest.skip("symbolic links not supported on this file system")
    path = _write(base, {"training": [dict(PAIR, fixed_image="link/mr.nii.gz")]})
    with pytest.raises(ValueError, match="outside base_dir"):
        load_registration_datalist(path, base_dir=base)


def test_ill_args(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Datalist file not found: '.*missing\.json'"):
        load_registration_datalist(tmp_path / "missing.json")
    path = _write(tmp_path, {"training": [PAIR]})
    with pytest.raises(FileNotFoundError, match="base_dir"):
        load_registration_datalist(path, base_dir=tmp_path / "nope")
    with pytest.raises(TypeError, match="path must be a str"):
        load_registration_datalist(3)
    with pytest.raises(TypeError, match="section must be a str"):
        load_registration_datalist(path, section=0)
