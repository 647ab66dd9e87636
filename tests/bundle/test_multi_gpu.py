"""multi_gpu_train.json: two processes with DistributedDataParallel on CPU (gloo), started by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
SMALL_NET = json.loads((Path(__file__).parent / "small_network.json").read_text())  # a tiny network, for speed
NAN_RANK, NAN_ITERATION = 1, 3  # one rank gets a NaN moving image: every rank must skip that step together
RANK_ZERO_ONLY = {  # handlers the multi-GPU config disables on ranks > 0, by their ids in train.json
    "train#progress_bar": "ignite.handlers.ProgressBar",
    "train#stats": "StatsHandler",
    "train#tensorboard": "TensorBoardStatsHandler",
    "train#weight_curves": "mtreg_monai.handlers.WeightCurveHandler",
    "train#figure": "mtreg_monai.handlers.RegistrationFigureHandler",
    "validate#stats": "StatsHandler",
    "validate#tensorboard": "TensorBoardStatsHandler",
}


def _test_config(tmp: Path, out: Path, epochs: int) -> dict:
    """Tiny phantom and network; per-rank output folders (to see who wrote what); each rank's final state saved."""
    record = (
        "lambda e: @test_seen.append({'iteration': e.state.iteration, 'nonfinite': bool(e.state.output['nonfinite']), "
        "'pair': str(e.state.batch['fixed_image'].meta['filename_or_obj'][0])})"
    )
    poison = (
        f"lambda e: e.state.batch['moving_image'].fill_(float('nan')) if dist.get_rank() == {NAN_RANK} else None"
    )
    save = (
        f"$torch.save({{'student': @network.module.state_dict(), 'teacher': @train#teacher.teacher.state_dict(), "
        f"'seen': @test_seen, 'iteration': @train#trainer.state.iteration, 'pid': os.getpid(), "
        f"'val_metrics': @validate#evaluator.state.metrics, "
        f"'val_rows': @validate#evaluator.state.metric_details['val_mean_dice'].shape[0]}}, "
        f"'{out}/rank' + os.environ['RANK'] + '.pt')"
    )
    return {
        "phantom_dir": str(tmp / "phantom"),
        "spatial_size": [32, 32, 32],
        "phantom#num_pairs": 7,
        "phantom#num_val": 2,
        "phantom#num_test": 1,
        "epochs": epochs,
        "val_interval": 1,
        "log_every": 1,
        "num_mc_samples": 3,
        "learning_rate": 1e-3,
        "alpha": 0.9,
        "dist_timeout_minutes": 1,  # a rank left waiting in a collective fails after a minute, not half an hour
        **SMALL_NET,
        "ckpt_dir": "$@bundle_root + '/models_rank' + os.environ['RANK']",
        "output_dir": "$@bundle_root + '/outputs_rank' + os.environ['RANK']",
        "test_seen": "$list()",
        "+initialize": [
            f"$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_STARTED(once={NAN_ITERATION}), "
            f"{poison})",
            f"$@train#trainer.add_event_handler(ignite.engine.Events.ITERATION_COMPLETED, {record})",
        ],
        "+finalize": [save],
    }


def _torchrun(tmp: Path, name: str, epochs: int) -> tuple[Path, str]:
    """``torchrun --nproc_per_node=2`` of the bundle on CPU (gloo); returns the folder of the rank files and the log."""
    out = tmp / name
    out.mkdir()
    extra = out / "test_overrides.json"
    extra.write_text(json.dumps(_test_config(tmp, out, epochs)))
    config_files = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(extra)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--meta_file", str(CONFIGS / "metadata.json"),
        "--config_file", json.dumps(config_files),
        "--logging_file", str(CONFIGS / "logging.conf"),
        "--bundle_root", str(tmp / "bundle"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun forwards the signal to its workers (each in its own session) and stops them
        try:
            log, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            log, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in 150 s:\n{log[-6000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun exited with {proc.returncode}:\n{log[-6000:]}")
    return out, log


@pytest.fixture(scope="module")
def ddp_tmp(tmp_path_factory):
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build")
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def ddp_run(ddp_tmp):
    """2 epochs of 2 iterations on 2 ranks; rank 1's pair at iteration 3 is NaN."""
    return _torchrun(ddp_tmp, "first", epochs=2)


@pytest.fixture(scope="module")
def ddp_resumed(ddp_tmp, ddp_run):
    """The same command with 3 epochs: resumes from rank 0's checkpoint_epoch=2.pt."""
    return _torchrun(ddp_tmp, "resumed", epochs=3)


def _rank(out: Path, r: int) -> dict:
    return torch.load(out / f"rank{r}.pt", weights_only=True)


def _assert_ranks_equal(out: Path) -> tuple[dict, dict]:
    r0, r1 = _rank(out, 0), _rank(out, 1)
    for part in ("student", "teacher"):
        assert r0[part].keys() == r1[part].keys()
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part} {k} differs between the ranks"
    return r0, r1


def test_ranks_end_with_identical_student_and_teacher(ddp_run):
    out, _ = ddp_run
    r0, r1 = _assert_ranks_equal(out)
    assert r0["iteration"] == r1["iteration"] == 4  # 4 training pairs / 2 ranks x 2 epochs
    assert any(not torch.equal(r0["teacher"][k], r0["student"][k]) for k in r0["student"])  # an EMA, not a copy
    # the checkpoint holds the unwrapped student (no "module." prefix) and the teacher, as the ranks end
    final = torch.load(out.parent / "bundle" / "models_rank0" / "model_final.pt", weights_only=True)
    for part, weights in (("student", final["model"]), ("teacher", final["teacher"]["ema_model"])):
        assert weights.keys() == r0[part].keys()
        for k, v in weights.items():
            assert torch.equal(v, r0[part][k]), f"checkpoint {part} {k}"


def test_sampler_gives_each_rank_its_own_pairs(ddp_run):
    out, _ = ddp_run
    seen = [_rank(out, r)["seen"] for r in (0, 1)]
    for epoch in (0, 1):
        pairs = [{s["pair"] for s in rank_seen[2 * epoch : 2 * epoch + 2]} for rank_seen in seen]
        assert len(pairs[0]) == len(pairs[1]) == 2 and not pairs[0] & pairs[1]  # disjoint halves of 4 pairs
    assert [s["iteration"] for s in seen[0]] == [s["iteration"] for s in seen[1]] == [1, 2, 3, 4]


def test_validation_is_sharded_and_gathered(ddp_run):
    out, _ = ddp_run
    r0, r1 = _rank(out, 0), _rank(out, 1)
    assert r0["val_rows"] == r1["val_rows"] == 2  # each rank registered 1 of the 2 pairs; the rows are all-gathered
    assert r0["val_metrics"] == r1["val_metrics"] and 0.0 < r0["val_metrics"]["val_mean_dice"] <= 1.0


def test_nonfinite_loss_on_one_rank_skips_the_step_on_all(ddp_run):
    out, log = ddp_run
    for r in (0, 1):
        flags = {s["iteration"]: s["nonfinite"] for s in _rank(out, r)["seen"]}
        assert flags == {i: i == NAN_ITERATION for i in (1, 2, 3, 4)}, f"rank {r}: {flags}"
    assert "Rank 0: a non-finite loss on another rank at iteration 3" in log


def test_only_rank_zero_writes(ddp_run):
    out, _ = ddp_run
    bundle = out.parent / "bundle"
    models, outputs = bundle / "models_rank0", bundle / "outputs_rank0"
    assert {"model.pt", "model_final.pt", "as_atc_checkpoint_epoch=2.pt"} <= {p.name for p in models.iterdir()}
    names = {p.name for p in outputs.iterdir()}
    assert {"weights.csv", "weights.png", "validation_pair.png"} <= names
    events = [n for n in names if n.startswith("events.out.tfevents")]
    assert len(events) == 2 and all(n.split(".")[-2] == str(_rank(out, 0)["pid"]) for n in events)  # train, val
    rank1 = [p for d in ("models_rank1", "outputs_rank1") if (bundle / d).exists() for p in (bundle / d).rglob("*")]
    assert rank1 == [], f"rank 1 wrote {rank1}"


def test_phantom_is_generated_once(ddp_run):
    out, log = ddp_run
    assert log.count("wrote 7 phantom pairs") == 1  # rank 0 generates ...
    assert log.count("reusing the phantom dataset") == 1  # ... rank 1 waits, then finds it complete
    assert (out.parent / "phantom" / "dataset.json").is_file()


def test_resume_loads_the_same_checkpoint_on_every_rank(ddp_run, ddp_resumed):
    out, log = ddp_resumed
    r0, r1 = _assert_ranks_equal(out)
    assert r0["iteration"] == r1["iteration"] == 6
    assert [s["iteration"] for s in r0["seen"]] == [s["iteration"] for s in r1["seen"]] == [5, 6]  # epoch 3 only
    assert log.count("reusing the phantom dataset") == 2 and "phantom pairs and" not in log
    assert "Restored all variables from" in log and "models_rank0/as_atc_checkpoint_epoch=2.pt" in log


def test_rank_zero_only_handlers_are_the_intended_ones():
    """The multi-GPU config disables handlers by id: each id names the handler meant, and no other is disabled."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json")])
    for handler_id, target in RANK_ZERO_ONLY.items():
        assert parser[handler_id]["_target_"] == target, handler_id
        assert parser[handler_id]["_disabled_"] == "$dist.get_rank() > 0", handler_id
    listed = [item[1:] for list_id in ("train#common_handlers", "validate#handlers") for item in parser[list_id]]
    assert set(RANK_ZERO_ONLY) <= set(listed)
    for handler_id in set(listed) - set(RANK_ZERO_ONLY):
        assert "_disabled_" not in parser[handler_id], handler_id  # e.g. the learning rate: on every rank
    assert parser["train#checkpoint#_disabled_"] == "$dist.get_rank() > 0"
    assert "_disabled_" not in parser["train#validation"]  # every rank validates its shard: the metrics all-gather
    assert parser["train#lr_schedule#_target_"] == "LrScheduleHandler"
    assert parser["train#reseed#seed"] == "$@seed + dist.get_rank()"
    assert parser["train#figure#network"] == "$@network.module"
    assert parser["train#extra_handlers"] == ["@train#nonfinite_guard"]


# the helpers without a process group (one process): the single-process answers
def test_helpers_without_process_group():
    from ignite.engine import Engine
    from monai.engines.utils import IterationEvents

    from mtreg_monai.engines import distributed as d

    assert d.rank_zero_first(lambda a, b: a + b, 1, b=2) == 3
    with pytest.raises(TypeError, match="callable"):
        d.rank_zero_first("not a function")
    obj = {"path": "x.pt"}
    assert d.broadcast_object(obj) is obj
    with pytest.raises(ValueError, match="src"):
        d.broadcast_object(obj, src=1)

    engine = Engine(lambda e, b: None)
    engine.register_events(*IterationEvents)
    guard = d.DistributedNonFiniteGuard()
    guard.attach(engine)
    guard.attach(engine)
    assert sum(h[0] is guard for h in engine._event_handlers[IterationEvents.LOSS_COMPLETED]) == 1
    loss = torch.tensor(1.5, requires_grad=True) * 2
    engine.state.output = {"loss": loss}
    guard(engine)  # no process group: nothing to agree on, the loss is left alone
    assert loss.item() == 3.0
