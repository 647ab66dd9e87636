"""Training killed (SIGKILL) in the middle of an epoch and restarted with the same command replays exactly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
KILL_AT = 5  # 3 training pairs per epoch: iteration 5 is the middle of epoch 2


def _command(bundle_root: Path, phantom: Path, extra: Path | None) -> list[str]:
    configs = [str(CONFIGS / "train.json")] + ([str(extra)] if extra else [])
    return [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", json.dumps(configs),
        "--bundle_root", str(bundle_root), "--phantom_dir", str(phantom),
        "--spatial_size", "[32,32,32]", "--epochs", "3", "--val_interval", "1", "--num_mc_samples", "3",
        "--learning_rate", "0.001", "--phantom#num_pairs", "5", "--phantom#num_val", "1", "--phantom#num_test", "1",
        "--network_def#encoder_channels", "[4,8,8,8]", "--network_def#decoder_channels", "[8,8,8,8]",
        "--train#weight_curves#keys", "['loss', 'loss_sim', 'lambda_phi', 'lambda_c']",
    ]  # fmt: skip


def _losses(bundle_root: Path) -> dict[int, dict[str, float]]:
    with open(bundle_root / "outputs" / "weights.csv") as f:
        return {int(r["iteration"]): {k: float(v) for k, v in r.items() if k != "iteration"} for r in csv.DictReader(f)}


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    phantom = tmp_path / "phantom"
    reference = tmp_path / "reference"
    subprocess.run(_command(reference, phantom, None), check=True, capture_output=True, env=env, cwd=tmp_path)
    uninterrupted = _losses(reference)
    assert sorted(uninterrupted) == list(range(1, 10))

    killer = tmp_path / "kill.json"  # test-only: the process kills itself after iteration KILL_AT
    killer.write_text(json.dumps({"+initialize": [
        f"$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED(once={KILL_AT}), "
        "lambda e: os.kill(os.getpid(), 9))"
    ]}))  # fmt: skip
    resumed = tmp_path / "resumed"
    killed = subprocess.run(_command(resumed, phantom, killer), capture_output=True, env=env, cwd=tmp_path)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert (resumed / "models" / "as_atc_checkpoint_epoch=1.pt").is_file()
    assert not (resumed / "outputs" / "weights.csv").exists()  # the killed run got no further than epoch 2

    subprocess.run(_command(resumed, phantom, None), check=True, capture_output=True, env=env, cwd=tmp_path)
    after = _losses(resumed)
    # resumed from the end of epoch 1 (its curves come back from the checkpoint), epoch 2 replayed, then epoch 3
    assert sorted(after) == list(range(1, 10))
    for it, row in after.items():
        for key, value in row.items():
            assert value == pytest.approx(uninterrupted[it][key], abs=1e-6, rel=0), (it, key)
