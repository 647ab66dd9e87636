"""Two training runs with the same seed on the CPU give identical losses and weights (MONAI set_determinism)."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"


def _train(tmp_path: Path, name: str, seed: int) -> tuple[list[float], dict, dict]:
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        run_id="training",
        bundle_root=str(tmp_path / name),
        phantom_dir=str(tmp_path / "phantom"),
        spatial_size=[32, 32, 32],
        epochs=2,
        val_interval=2,
        num_mc_samples=3,
        seed=seed,
        learning_rate=1e-3,
        **{"phantom#num_pairs": 5, "phantom#num_val": 1, "phantom#num_test": 1},
        **{"network_def#encoder_channels": [4, 8, 8, 8], "network_def#decoder_channels": [8, 8, 8, 8]},
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    wf.run()
    wf.finalize()
    student = {k: v.clone() for k, v in wf.parser.get_parsed_content("network").state_dict().items()}
    teacher = {k: v.clone() for k, v in wf.parser.get_parsed_content("train#teacher").teacher.state_dict().items()}
    return losses, student, teacher


def test_same_seed_same_run(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the same thread count for both runs (results differ ~1e-8 across counts)
        a, b, c = _train(tmp_path, "a", 7), _train(tmp_path, "b", 7), _train(tmp_path, "c", 8)
    finally:
        torch.set_num_threads(threads)
    assert len(a[0]) == 6 and a[0] == b[0]  # bitwise equal losses
    for x, y in ((a[1], b[1]), (a[2], b[2])):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    assert a[0] != c[0]  # another seed gives another run
