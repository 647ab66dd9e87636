"""The bundle archive: model-zoo layout, weights only when asked for and usable, reproducible bytes."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from mtreg_monai.apps.archive import DEFAULT_NAME, bundle_files, main, make_bundle_archive

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "bundle"


@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    """The shipped bundle plus what must not be archived: run outputs, a training checkpoint, caches."""
    copy = tmp_path / "bundle"
    shutil.copytree(BUNDLE, copy, ignore=shutil.ignore_patterns("models", "outputs", "eval"))
    (copy / "models").mkdir()
    (copy / "outputs" / "phantom").mkdir(parents=True)
    (copy / "outputs" / "phantom" / "dataset.json").write_text("{}")
    torch.save({"model": {"w": torch.ones(2)}}, copy / "models" / "vm_checkpoint_epoch=1.pt")
    (copy / "configs" / "__pycache__").mkdir()
    (copy / "configs" / "__pycache__" / "x.pyc").write_bytes(b"")
    (copy / "docs" / ".notes.swp").write_text("")
    return copy


def _names(path: str) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def test_layout_without_weights(bundle_copy, tmp_path):
    out = make_bundle_archive(tmp_path / "b.zip", bundle_dir=bundle_copy)
    names = _names(out)
    shipped = [
        p.relative_to(BUNDLE).as_posix() for d in ("configs", "docs") for p in (BUNDLE / d).rglob("*") if p.is_file()
    ]
    expected = sorted(f"{DEFAULT_NAME}/{n}" for n in [*shipped, "LICENSE", "large_files.yml"] if "__pycache__" not in n)
    assert names == expected
    assert f"{DEFAULT_NAME}/configs/inference.json" in names and f"{DEFAULT_NAME}/configs/metadata.json" in names
    assert not any("/models/" in n or "/outputs/" in n or "__pycache__" in n or ".swp" in n for n in names)


def test_bundle_weights_and_checkpoint(bundle_copy, tmp_path):
    torch.save({"model": {"w": torch.zeros(3)}}, bundle_copy / "models" / "model.pt")
    names = _names(make_bundle_archive(tmp_path / "a.zip", bundle_dir=bundle_copy, name="x"))
    assert "x/models/model.pt" in names and "x/models/vm_checkpoint_epoch=1.pt" not in names
    assert "x/models/model.pt" not in _names(
        make_bundle_archive(tmp_path / "n.zip", bundle_dir=bundle_copy, include_model=False)
    )
    ckpt = tmp_path / "trained.pt"
    torch.save({"model": {"w": torch.full((3,), 7.0)}}, ckpt)
    out = make_bundle_archive(tmp_path / "c.zip", bundle_dir=bundle_copy, checkpoint=ckpt, name="x")
    with zipfile.ZipFile(out) as z:
        z.extract("x/models/model.pt", tmp_path / "unz")
    loaded = torch.load(tmp_path / "unz" / "x" / "models" / "model.pt", weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.full((3,), 7.0))


def test_reproducible(bundle_copy, tmp_path):
    a = make_bundle_archive(tmp_path / "a.zip", bundle_dir=bundle_copy)
    b = make_bundle_archive(tmp_path / "b.zip", bundle_dir=bundle_copy)
    assert Path(a).read_bytes() == Path(b).read_bytes()


def test_default_out(bundle_copy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--bundle", str(bundle_copy)]) == 0
    assert (tmp_path / "dist" / f"{DEFAULT_NAME}_v0.3.0.zip").is_file()


def test_bundle_files_default_bundle():
    files = bundle_files(BUNDLE)
    assert "configs/train.json" in files and "docs/README.md" in files and "LICENSE" in files
    assert not any(k.startswith(("models/", "outputs/")) for k in files)


def test_ill_checkpoint(bundle_copy, tmp_path):
    no_model = tmp_path / "no_model.pt"
    torch.save({"teacher": {"w": torch.ones(1)}}, no_model)
    with pytest.raises(ValueError, match="no 'model' entry"):
        make_bundle_archive(tmp_path / "a.zip", bundle_dir=bundle_copy, checkpoint=no_model)
    nan = tmp_path / "nan.pt"
    torch.save({"model": {"w": torch.tensor([float("nan")])}}, nan)
    with pytest.raises(ValueError, match="non-finite"):
        make_bundle_archive(tmp_path / "a.zip", bundle_dir=bundle_copy, checkpoint=nan)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        make_bundle_archive(tmp_path / "a.zip", bundle_dir=bundle_copy, checkpoint=tmp_path / "missing.pt")
    assert not (tmp_path / "a.zip").exists()


def test_ill_opts(bundle_copy, tmp_path, capsys):
    with pytest.raises(ValueError, match="name"):
        make_bundle_archive(tmp_path / "a.zip", bundle_dir=bundle_copy, name="../up")
    with pytest.raises(ValueError, match="out must be a .zip"):
        make_bundle_archive(tmp_path / "a.tar", bundle_dir=bundle_copy)
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        make_bundle_archive(tmp_path / "a.zip", bundle_dir=tmp_path)
    assert main(["--out", str(tmp_path / "a.zip"), "--bundle", str(tmp_path)]) == 2
    assert "not a bundle" in capsys.readouterr().err
