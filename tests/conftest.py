"""Shared fixtures: a bundle trained for a few steps on a tiny phantom, with the default network."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory) -> Path:
    """``bundle_root`` of a default-network bundle trained 1 epoch on 2 phantom pairs at 32^3 (models/model.pt)."""
    from monai.bundle import ConfigWorkflow

    root = tmp_path_factory.mktemp("trained_bundle")
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        run_id="training",
        bundle_root=str(root),
        spatial_size=[32, 32, 32],
        epochs=1,
        val_interval=1,
        num_mc_samples=2,
        **{"phantom#num_pairs": 4, "phantom#num_val": 1, "phantom#num_test": 1},
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (root / "models" / "model.pt").is_file()
    return root
