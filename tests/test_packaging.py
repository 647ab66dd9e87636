"""Deployable artefacts in a clean environment: the wheel carries the bundle, the archive runs on its own.

Builds the wheel and the bundle archive from a copy of this source tree, installs the wheel (CPU torch first) in a
fresh virtual environment and, from a working folder outside any checkout: unpacks the archive and registers a
phantom pair with its standalone ``inference.json`` (``python -m monai.bundle run``), then runs ``mtreg-register``
without ``--bundle``. Slow (a few minutes, mostly pip): deselect with ``-m "not slow"``; CI runs it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mtreg_monai.handlers import QC_COLUMNS, QC_MC_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the README's CPU build, installed first so that pip pulls no CUDA build
NAME = "mtreg_ctmr_registration"
# what a copy of the checkout leaves out: environments, build products, weights and run outputs
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv*", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "outputs", "eval",
    "runs", "out", "*.pt", "*.ts",
)  # fmt: skip


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in cmd], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{cmd} exited with {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _clean_env(venv: Path) -> dict:
    """The environment of a shell with only ``venv`` activated: no PYTHONPATH, no other virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _tiny_checkpoint(path: Path) -> None:
    """The bundle's default network, untrained, saved as training saves ``model.pt`` (``{"model": state_dict}``)."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "train.json"))
    torch.manual_seed(0)
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, path)


def test_default_bundle_dir_checkout():
    from mtreg_monai.apps import default_bundle_dir

    assert default_bundle_dir() == ROOT / "bundle"


def test_default_bundle_dir_installed(tmp_path, monkeypatch):
    """In site-packages the packaged copy is used, even beside a stray top-level ``bundle`` folder."""
    from mtreg_monai.apps import register

    site = tmp_path / "site-packages"
    for folder in (site / "mtreg_monai" / "bundle" / "configs", site / "bundle" / "configs"):
        folder.mkdir(parents=True)
        (folder / "inference.json").write_text("{}")
    monkeypatch.setattr(register, "__file__", str(site / "mtreg_monai" / "apps" / "register.py"))
    assert register.default_bundle_dir() == site / "mtreg_monai" / "bundle"
    (site / "setup.cfg").write_text("")  # a source checkout: its top-level bundle/ wins
    assert register.default_bundle_dir() == site / "bundle"


@pytest.mark.slow
def test_wheel_and_archive_in_clean_env(tmp_path):
    # build both from a copy: building in place would leave build/ and *.egg-info in the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SOURCE_IGNORE)
    dist = tmp_path / "dist"
    host_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", src, "-w", dist], tmp_path, host_env)
    (wheel,) = dist.glob("mtreg_monai-*.whl")
    ckpt = tmp_path / "model.pt"
    _tiny_checkpoint(ckpt)
    archive = dist / f"{NAME}.zip"  # the documented command, from the checkout
    _run(
        [
            sys.executable,
            "-m",
            "mtreg_monai.apps.archive",
            "--bundle",
            src / "bundle",
            "--checkpoint",
            ckpt,
            "--out",
            archive,
        ],
        src,
        host_env,
    )

    # a fresh environment with the wheel only
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, host_env)
    env, python = _clean_env(venv), venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", TORCH], tmp_path, env)
    _run([python, "-m", "pip", "install", "-q", f"{wheel}[bundle]"], tmp_path, env)

    work = tmp_path / "work"  # outside the checkout: nothing on the path but the environment
    work.mkdir()
    where = _run(
        [
            python,
            "-c",
            "import mtreg_monai, mtreg_monai.apps as a; print(mtreg_monai.__file__); print(a.default_bundle_dir())",
        ],
        work,
        env,
    )
    module_file, bundle_dir = (Path(line) for line in where.stdout.split())
    assert venv in module_file.parents, f"mtreg_monai imported from {module_file}, not from the fresh environment"
    assert bundle_dir == module_file.parent / "bundle"
    # the wheel's bundle is the archive's: the installed mtreg-archive zips the packaged copy to the same bytes
    _run([venv / "bin" / "mtreg-archive", "--checkpoint", ckpt, "--out", work / "again.zip"], work, env)
    assert (work / "again.zip").read_bytes() == archive.read_bytes()
    assert not (bundle_dir / "models").exists(), "the wheel must carry no weights"

    make_data = (
        "from mtreg_monai.data import make_phantom_dataset; "
        "print(make_phantom_dataset('data', num_pairs=2, spatial_size=(32, 32, 32), seed=0, num_val=0, num_test=1))"
    )
    datalist = Path(_run([python, "-c", make_data], work, env).stdout.strip().splitlines()[-1])
    datalist = datalist if datalist.is_absolute() else work / datalist
    (pair,) = json.loads(datalist.read_text())["test"]

    # 1. the unpacked archive, standalone inference config (no train.json), weights from the archive
    with zipfile.ZipFile(archive) as z:
        z.extractall(work / "unpacked")
    bundle = work / "unpacked" / NAME
    assert (bundle / "models" / "model.pt").is_file()
    configs = bundle / "configs"
    _run(
        [
            python, "-m", "monai.bundle", "run",
            "--meta_file", configs / "metadata.json", "--config_file", configs / "inference.json",
            "--logging_file", configs / "logging.conf", "--bundle_root", bundle,
            "--datalist", datalist, "--infer_dir", work / "out_bundle", "--device", "cpu", "--mc_uncertainty", "True",
        ],
        work,
        env,
    )  # fmt: skip
    (result,) = [p for p in (work / "out_bundle").iterdir() if p.is_dir()]
    assert (result / "ddf.nii.gz").is_file() and (result / "warped_moving.nii.gz").is_file()
    assert _read_csv(work / "out_bundle" / "failures.csv") == []
    (qc,) = _read_csv(work / "out_bundle" / "quality_control.csv")  # with MC uncertainty: every column filled
    assert Path(qc["moving_image"]).name == Path(pair["moving_image"]).name and all(qc[c] != "" for c in QC_COLUMNS)

    # 2. mtreg-register without --bundle: the packaged bundle, the weights given with --checkpoint
    fixed, moving = (
        pair[k] if os.path.isabs(pair[k]) else str(datalist.parent / pair[k]) for k in ("fixed_image", "moving_image")
    )
    register = [venv / "bin" / "mtreg-register", "--fixed", fixed, "--moving", moving, "--device", "cpu"]
    out = _run([*register, "--out", work / "out_cli", "--checkpoint", ckpt], work, env)
    result = Path(out.stdout.strip().splitlines()[-1])
    assert result.parent == work / "out_cli" and (result / "ddf.nii.gz").is_file()
    (qc,) = _read_csv(work / "out_cli" / "quality_control.csv")  # no MC passes: the uncertainty columns empty
    assert all(qc[c] == "" for c in QC_MC_COLUMNS) and float(qc["folding_percent"]) >= 0
    # without weights it says how to give them, and the installed package stays untouched
    missing = subprocess.run(
        [str(c) for c in [*register, "--out", work / "out_none"]],
        check=False,
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert missing.returncode == 2 and "--checkpoint" in missing.stderr, missing.stderr
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["LICENSE", "configs", "docs", "large_files.yml"]
