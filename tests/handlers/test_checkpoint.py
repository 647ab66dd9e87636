"""Tests for atomic, finite-only checkpoint saving and safe loading."""

from __future__ import annotations

import io
import logging
import os
import pickle
import stat

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from mtreg_monai.handlers.checkpoint import (
    AtomicCheckpointSaver,
    CheckpointError,
    SafeCheckpointLoader,
    load_checkpoint,
    non_finite_entries,
)


def _trainer(model: nn.Module, opt: torch.optim.Optimizer) -> Engine:
    def step(engine, batch):
        opt.zero_grad()
        loss = model(torch.full((1, 2), float(batch))).pow(2).sum()
        loss.backward()
        opt.step()
        return loss.item()

    return Engine(step)


def _setup(tmp_path, **kwargs):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = _trainer(model, opt)
    save_dict = {"model": model, "optimizer": opt, "trainer": trainer}
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=save_dict, **kwargs)
    saver.attach(trainer)
    return model, opt, trainer, saver


class _Marker:
    """Unpickling this creates a marker file: the attack weights_only loading must refuse."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_save_and_load(tmp_path):
    model, _, trainer, saver = _setup(
        tmp_path, save_interval=1, n_saved=1, save_final=True, final_filename="model_final.pt"
    )
    saver.attach(trainer)  # a second attach must not register twice
    assert len(trainer._event_handlers[Events.COMPLETED]) == 1
    trainer.run(range(3), max_epochs=2)
    names = sorted(os.listdir(tmp_path))
    assert names == ["checkpoint_epoch=2.pt", "model_final.pt"]  # epoch 1 deleted after epoch 2 was written
    ckpt = load_checkpoint(tmp_path / "model_final.pt")
    assert set(ckpt) == {"model", "optimizer", "trainer"}
    assert ckpt["trainer"]["iteration"] == 6
    torch.testing.assert_close(ckpt["model"]["weight"], model.weight.detach())


def test_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        _, _, trainer, _ = _setup(tmp_path, save_final=True, final_filename="model.pt")
        trainer.run(range(2), max_epochs=1)
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "model.pt").st_mode)
    assert mode == 0o644, oct(mode)


def test_crash_during_save_keeps_previous(tmp_path, monkeypatch):
    model, _, trainer, _ = _setup(
        tmp_path, save_final=True, final_filename="model.pt", save_interval=1, n_saved=1
    )
    trainer.run(range(2), max_epochs=1)
    before = set(os.listdir(tmp_path))
    assert before == {"model.pt", "checkpoint_epoch=1.pt"}
    good = load_checkpoint(tmp_path / "model.pt")["model"]["weight"].clone()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
            f.flush()
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError, match="No space left"):
        trainer.run(range(2), max_epochs=2)  # epoch-2 interval save crashes
    monkeypatch.setattr(torch, "save", real_save)
    # the previous files are intact, nothing partial under a final name, no temporary file left
    assert set(os.listdir(tmp_path)) == before
    torch.testing.assert_close(load_checkpoint(tmp_path / "model.pt")["model"]["weight"], good)
    assert load_checkpoint(tmp_path / "checkpoint_epoch=1.pt")["trainer"]["iteration"] == 2


def test_non_finite_not_saved(tmp_path, caplog):
    model, _, trainer, saver = _setup(tmp_path, save_final=True, final_filename="model.pt", name="ckpt_test")
    trainer.run(range(2), max_epochs=1)
    good = load_checkpoint(tmp_path / "model.pt")["model"]["weight"].clone()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    assert non_finite_entries(saver.save_dict) == ["model.weight"]
    with caplog.at_level(logging.ERROR, logger="ckpt_test"):
        saver.completed(trainer)
    assert "model.weight" in caplog.text and "final" in caplog.text and str(tmp_path) in caplog.text
    assert os.listdir(tmp_path) == ["model.pt"]
    torch.testing.assert_close(load_checkpoint(tmp_path / "model.pt")["model"]["weight"], good)


def test_non_finite_in_run_keeps_interval_checkpoint(tmp_path, caplog):
    model, opt, trainer, _ = _setup(tmp_path, save_interval=1, n_saved=1, name="ckpt_run")

    @trainer.on(Events.EPOCH_STARTED(once=2))
    def _poison(engine):
        with torch.no_grad():
            model.bias.fill_(float("inf"))

    with caplog.at_level(logging.ERROR, logger="ckpt_run"):
        trainer.run(range(2), max_epochs=2)
    assert os.listdir(tmp_path) == ["checkpoint_epoch=1.pt"]
    assert "non-finite" in caplog.text and "model.bias" in caplog.text
    assert torch.isfinite(load_checkpoint(tmp_path / "checkpoint_epoch=1.pt")["model"]["bias"]).all()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_load_checkpoint_missing(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "kind, match",
    [("empty", "empty"), ("truncated", "truncated"), ("random", "corrupt"), ("tensor", "expected a dict")],
)
def test_load_checkpoint_bad(tmp_path, kind, match):
    path = tmp_path / f"{kind}.pt"
    if kind == "empty":
        _write(path, b"")
    elif kind == "truncated":
        torch.save({"model": nn.Linear(4, 4).state_dict()}, path)
        _write(path, path.read_bytes()[:300])
    elif kind == "random":
        _write(path, bytes(torch.randint(0, 256, (512,), generator=torch.Generator().manual_seed(1)).tolist()))
    else:
        torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    if kind in ("truncated", "random"):
        assert info.value.__cause__ is not None


@pytest.mark.parametrize("writer", ["pickle", "torch"])
def test_malicious_pickle_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": _Marker(str(marker))}
    if writer == "pickle":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    model = nn.Linear(2, 1)
    with pytest.raises(CheckpointError, match="evil.pt"):
        SafeCheckpointLoader(load_path=str(path), load_dict={"model": model})(Engine(lambda e, b: None))
    assert not marker.exists()


def test_safe_loader_restores(tmp_path):
    model, opt, trainer, _ = _setup(tmp_path, save_final=True, final_filename="model.pt")
    trainer.run(range(3), max_epochs=2)

    torch.manual_seed(5)
    model2 = nn.Linear(2, 1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9)
    trainer2 = _trainer(model2, opt2)
    loader = SafeCheckpointLoader(
        load_path=str(tmp_path / "model.pt"),
        load_dict={"model": model2, "optimizer": opt2, "trainer": trainer2},
        map_location="cpu",
    )
    loader.attach(trainer2)
    loader.attach(trainer2)
    assert len(trainer2._event_handlers[Events.STARTED]) == 1
    trainer2.run(range(3), max_epochs=2)  # already finished: restores and stops
    assert trainer2.state.epoch == 2 and trainer2.state.iteration == 6
    torch.testing.assert_close(model2.weight, model.weight)
    torch.testing.assert_close(model2.bias, model.bias)
    buf = opt.state_dict()["state"][0]["momentum_buffer"]
    torch.testing.assert_close(opt2.state_dict()["state"][0]["momentum_buffer"], buf)


def test_safe_loader_mismatch_names_file(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": nn.Linear(3, 1).state_dict()}, path)
    with pytest.raises(CheckpointError, match="model.pt"):
        SafeCheckpointLoader(load_path=str(path), load_dict={"model": nn.Linear(2, 1)})(Engine(lambda e, b: None))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        SafeCheckpointLoader(load_path=str(tmp_path / "missing.pt"), load_dict={"model": nn.Linear(2, 1)})(
            Engine(lambda e, b: None)
        )


def test_no_iteration_no_final_save(tmp_path, caplog):
    """A run that trains no step (a finished training resumed, or a failure at the start) rewrites nothing."""
    model, opt, trainer, saver = _setup(tmp_path, save_final=True, final_filename="model_final.pt", name="ckpt_idle")
    trainer.run(range(2), max_epochs=1)
    assert saver.iterations_run == 2
    before = (tmp_path / "model_final.pt").read_bytes()

    trainer2 = _trainer(model, opt)
    saver2 = AtomicCheckpointSaver(str(tmp_path), {"model": model, "optimizer": opt, "trainer": trainer2},
                                   save_final=True, final_filename="model_final.pt", name="ckpt_idle")  # fmt: skip
    SafeCheckpointLoader(str(tmp_path / "model_final.pt"), {"trainer": trainer2}).attach(trainer2)
    saver2.attach(trainer2)
    with caplog.at_level(logging.INFO, logger="ckpt_idle"):
        trainer2.run(range(2), max_epochs=1)  # already finished: no iteration
    assert saver2.iterations_run == 0 and "no iteration ran in this run" in caplog.text
    assert (tmp_path / "model_final.pt").read_bytes() == before

    trainer3 = _trainer(model, opt)
    saver3 = AtomicCheckpointSaver(str(tmp_path / "new"), {"model": model}, save_final=True, final_filename="f.pt")
    saver3.attach(trainer3)

    @trainer3.on(Events.STARTED)
    def _fail(engine):
        raise RuntimeError("failed before the first step")

    with pytest.raises(RuntimeError, match="before the first step"):
        trainer3.run(range(2), max_epochs=1)
    assert not (tmp_path / "new" / "f.pt").exists()


def test_key_metric_state(tmp_path):
    model = nn.Linear(2, 1)
    evaluator = Engine(lambda e, b: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.metrics = {"dice": 0.5}

    saver = AtomicCheckpointSaver(str(tmp_path), {"model": model}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt")  # fmt: skip
    saver.attach(evaluator)
    evaluator.run(range(1))
    state = saver.state_dict()
    assert [p for p, _ in state["_saved"]] == [0.5] and os.listdir(tmp_path) == ["model.pt"]  # Ignite's key
    assert saver.key_metric_checkpoint is not None and saver.key_metric_checkpoint.state_dict() == state
    torch.save({"best": saver.state_dict()}, tmp_path / "resume.pt")
    restored = AtomicCheckpointSaver(str(tmp_path), {"model": model}, save_key_metric=True, key_metric_name="dice",
                                     key_metric_filename="model.pt")  # fmt: skip
    SafeCheckpointLoader(str(tmp_path / "resume.pt"), {"best": restored})(Engine(lambda e, b: None))
    assert restored.state_dict() == state  # the best score survives a resume: a worse model does not replace it
    assert AtomicCheckpointSaver(str(tmp_path), {"model": model}, save_final=True).state_dict() == {}


def test_safe_loader_max_epochs_names_file(tmp_path):
    model, opt, trainer, _ = _setup(tmp_path, save_final=True, final_filename="model.pt")
    trainer.run(range(2), max_epochs=3)
    trainer2 = _trainer(model, opt)
    trainer2.state.max_epochs = 2
    with pytest.raises(ValueError, match=r"Epoch count \(3\) in checkpoint '.*model.pt'"):
        SafeCheckpointLoader(str(tmp_path / "model.pt"), {"trainer": trainer2})(trainer2)


def test_key_metric_from_epoch(tmp_path):
    """Only validations from ``key_metric_from_epoch`` on can become the best checkpoint (the second half)."""
    model = nn.Linear(2, 1)
    evaluator = Engine(lambda e, b: None)
    scores = {1: 0.9, 2: 0.6, 3: 0.7, 4: 0.65}  # the best overall (epoch 1) is in the first half

    @evaluator.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.metrics = {"dice": scores[engine.state.epoch]}

    saver = AtomicCheckpointSaver(str(tmp_path), {"model": model}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt", key_metric_from_epoch=3)  # fmt: skip
    saver.attach(evaluator)
    seen = []
    evaluator.set_data(range(1))
    for epoch in scores:  # as MONAI's Evaluator.run(global_epoch): one epoch numbered as the trainer's
        evaluator.state.epoch, evaluator.state.max_epochs = epoch - 1, epoch
        evaluator.state.epoch_length = 1
        evaluator.run()
        seen.append(os.path.exists(tmp_path / "model.pt"))
    assert seen == [False, False, True, True]
    assert [p for p, _ in saver.state_dict()["_saved"]] == [0.7]
    with pytest.raises(ValueError, match="key_metric_from_epoch"):
        AtomicCheckpointSaver(str(tmp_path), {"model": model}, save_key_metric=True, key_metric_from_epoch=0)
