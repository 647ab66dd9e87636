"""Run identity end to end: another run's checkpoint folder is refused, untouched; raising --epochs still resumes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtreg_monai.data import make_phantom_dataset
from mtreg_monai.handlers import RunIdentityError, checkpoint_identity

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
SMALL_NET = json.loads((Path(__file__).parent / "small_network.json").read_text())  # a tiny network, for speed
ENV = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}


def _train(cwd: Path, datalist: str, spatial_size: str, epochs: int) -> subprocess.CompletedProcess:
    """The issue's command line, relative paths and all, run in ``cwd`` (``--ckpt_dir M``)."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "train.json"),
        "--logging_file", str(CONFIGS / "logging.conf"), "--bundle_root", str(cwd / "bundle"),
        "--datalist", datalist, "--spatial_size", spatial_size, "--epochs", str(epochs), "--ckpt_dir", "M",
        "--val_interval", "1", "--num_mc_samples", "2",
    ]  # fmt: skip
    for key, value in SMALL_NET.items():
        cmd += [f"--{key}", json.dumps(value)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600, check=False)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> Path:
    """Folder with phantom datasets ``A`` (32^3, 2 training pairs) and ``B`` (48x48x32, other seed)."""
    root = tmp_path_factory.mktemp("run_identity")
    make_phantom_dataset(root / "A", num_pairs=4, spatial_size=(32, 32, 32), seed=0, num_val=1, num_test=1)
    make_phantom_dataset(root / "B", num_pairs=4, spatial_size=(48, 48, 32), seed=1, num_val=1, num_test=1)
    return root


def test_other_run_refused_and_folder_untouched_then_more_epochs_resume(two_datasets):
    cwd = two_datasets
    first = _train(cwd, "A/dataset.json", "[32,32,32]", epochs=1)
    assert first.returncode == 0, first.stderr[-3000:]
    models = cwd / "M"
    before = _snapshot(models)
    assert {"model.pt", "model_final.pt", "as_atc_checkpoint_epoch=1.pt"} <= set(before)
    for name in before:  # every checkpoint records the run identity, readable with weights_only
        ckpt = torch.load(models / name, weights_only=True)
        assert ckpt["run_identity"]["fingerprint"]["spatial_size"] == [32, 32, 32]
        assert ckpt["run_identity"]["fingerprint"]["datalist"] == "A/dataset.json"

    # the second command: another dataset and size, same folder
    other = _train(cwd, "B/dataset.json", "[48,48,32]", epochs=1)
    assert other.returncode != 0
    message = other.stdout + other.stderr
    assert "Refusing to resume training from 'M/as_atc_checkpoint_epoch=1.pt'" in message
    assert "datalist: checkpoint 'A/dataset.json', now 'B/dataset.json'" in message
    assert "spatial_size: checkpoint [32, 32, 32], now [48, 48, 32]" in message
    assert "datalist_sha256: checkpoint" in message
    assert "--resume False" in message and "--ckpt_dir" in message
    assert "Train completed" not in message and "Restored all variables" not in message
    assert _snapshot(models) == before  # same names, same bytes

    # the same command again: the training is finished, nothing trains, nothing is rewritten
    again = _train(cwd, "A/dataset.json", "[32,32,32]", epochs=1)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no iteration ran in this run" in again.stdout + again.stderr
    assert _snapshot(models) == before

    # raising --epochs (not part of the identity) resumes and trains the extra epoch
    more = _train(cwd, "A/dataset.json", "[32,32,32]", epochs=2)
    assert more.returncode == 0, more.stderr[-3000:]
    assert "Restored all variables from M/as_atc_checkpoint_epoch=1.pt" in more.stdout + more.stderr
    final = torch.load(models / "model_final.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 4 and final["trainer"]["epoch_length"] == 2  # 2 epochs of 2 pairs
    assert (models / "as_atc_checkpoint_epoch=2.pt").is_file()
    epoch1 = torch.load(io.BytesIO(before["model_final.pt"]), weights_only=True)["model"]
    assert any(not torch.equal(v, final["model"][k]) for k, v in epoch1.items())  # it did train further


def _workflow(root: Path, run_id: str, **overrides):
    from monai.bundle import ConfigWorkflow

    files = [CONFIGS / "train.json"] + ([CONFIGS / "evaluate.json"] if run_id == "evaluating" else [])
    wf = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        run_id=run_id,
        workflow_type=None,
        bundle_root=str(root / "bundle"),
        phantom_dir=str(root / "phantom"),
        spatial_size=[32, 32, 32],
        **{"phantom#num_pairs": 4, "phantom#num_val": 1, "phantom#num_test": 1},
        epochs=1,
        val_interval=1,
        **SMALL_NET,
        **overrides,
    )
    wf.initialize()
    return wf


def test_evaluation_names_its_checkpoint_and_refuses_another_network(tmp_path):
    wf = _workflow(tmp_path, "training", method="vm")
    wf.run()
    wf.finalize()
    model = tmp_path / "bundle" / "models" / "model.pt"
    expected = checkpoint_identity(model)
    assert expected["run_identity"] is not None and expected["epoch"] is not None

    evaluation = _workflow(tmp_path, "evaluating", method="vm")
    evaluation.run()
    evaluation.finalize()
    summary = (tmp_path / "bundle" / "outputs" / "eval" / "summary.md").read_text()
    assert f"| checkpoint | `{model}` |" in summary
    assert f"| checkpoint_epoch | {expected['epoch']} |" in summary
    assert f"| checkpoint_iteration | {expected['iteration']} |" in summary
    assert f"| checkpoint_run_identity | `{expected['run_identity']}` |" in summary
    with open(tmp_path / "bundle" / "outputs" / "eval" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {(r["checkpoint"], r["checkpoint_epoch"], r["checkpoint_run_identity"]) for r in rows} == {
        (str(model), str(expected["epoch"]), expected["run_identity"])
    }

    # dif_vm: the same tensors (a state dict would load without a word) but another network definition
    before = model.read_bytes()
    other = _workflow(tmp_path, "evaluating", method="dif_vm", eval_dir=str(tmp_path / "eval_dif"))
    with pytest.raises(RuntimeError) as err:
        other.run()
    cause = err.value.__cause__
    assert isinstance(cause, RunIdentityError), repr(err.value)
    assert "network.arguments.integration_steps: checkpoint 0, config 7" in str(cause) and str(model) in str(cause)
    assert not (tmp_path / "eval_dif").exists() and model.read_bytes() == before
