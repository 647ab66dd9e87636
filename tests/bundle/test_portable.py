"""The bundle folder works from a copy (zipped and unzipped elsewhere) with --bundle_root pointing at it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_zipped_copy_trains_in_place(tmp_path):
    archive = shutil.make_archive(str(tmp_path / "mtreg_bundle"), "zip", root_dir=ROOT, base_dir="bundle")
    shutil.unpack_archive(archive, tmp_path / "unzipped")
    copy = tmp_path / "unzipped" / "bundle"
    for junk in ("models", "outputs"):  # start from the shipped files only
        shutil.rmtree(copy / junk, ignore_errors=True)
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--meta_file", str(copy / "configs" / "metadata.json"),
        "--config_file", str(copy / "configs" / "train.json"),
        "--logging_file", str(copy / "configs" / "logging.conf"),
        "--bundle_root", str(copy),
        "--spatial_size", "[32,32,32]", "--epochs", "1", "--num_mc_samples", "2",
        "--phantom#num_pairs", "3", "--phantom#num_val", "1", "--phantom#num_test", "1",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True)
    assert (copy / "models" / "model.pt").is_file()
    assert (copy / "outputs" / "phantom" / "dataset.json").is_file()
