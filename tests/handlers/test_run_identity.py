"""Tests for the run identity: fingerprint, digest, differences, resume check, network definition check."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from mtreg_monai.handlers import (
    CheckpointError,
    RunIdentity,
    RunIdentityError,
    SafeCheckpointLoader,
    checkpoint_identity,
    datalist_identity,
    fingerprint_differences,
    fingerprint_digest,
    network_definition,
)
from mtreg_monai.networks import MCVoxelMorph

SMALL = {"encoder_channels": (4, 8), "decoder_channels": (8, 8), "refine_channels": (), "final_channels": (4,)}

DIFFERENCES = [  # (old, new, expected differences)
    ({"a": 1, "b": [1, 2]}, {"a": 1.0, "b": (1, 2)}, []),  # 1 == 1.0; tuples are lists
    ({"a": 1, "b": {"c": 2, "d": "x"}}, {"a": 1, "b": {"c": 3, "d": "x"}, "e": None},
     [("b.c", 2, 3), ("e", "<absent>", None)]),
    ({"a": 1, "gone": True}, {"a": 2}, [("a", 1, 2), ("gone", True, "<absent>")]),
]  # fmt: skip


@pytest.mark.parametrize("old, new, expected", DIFFERENCES)
def test_differences(old, new, expected):
    assert fingerprint_differences(old, new) == expected


def test_digest():
    assert fingerprint_digest({"k1": 3, "s": [32, 32]}) == fingerprint_digest({"s": [32.0, 32.0], "k1": 3.0})
    assert fingerprint_digest({"k1": 3}) != fingerprint_digest({"k1": 3.5})
    assert len(fingerprint_digest({"k1": 3})) == 16 and len(fingerprint_digest({}, length=64)) == 64


def test_datalist_identity(tmp_path):
    path = tmp_path / "dataset.json"
    path.write_bytes(b"abc")
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # SHA-256 of "abc"
    assert datalist_identity(path) == {"datalist": str(path), "datalist_sha256": expected}
    assert hashlib.sha256(b"abc").hexdigest() == expected
    with pytest.raises(FileNotFoundError, match="missing.json"):
        datalist_identity(tmp_path / "missing.json")


def test_network_definition():
    vm, dif = MCVoxelMorph(**SMALL), MCVoxelMorph(integration_steps=7, **SMALL)
    d = network_definition(vm)
    assert d["class"] == "mtreg_monai.networks.nets.mc_voxelmorph.MCVoxelMorph"
    assert d["arguments"]["integration_steps"] == 0 and d["arguments"]["backbone.dropout"] == 0.0
    assert d["tensors"] == {k: list(v.shape) for k, v in vm.state_dict().items()}
    assert network_definition(nn.DataParallel(vm)) == d  # wrappers looked through
    diff = fingerprint_differences(d, network_definition(dif))
    assert diff[0] == ("arguments.integration_steps", 0, 7)  # then the integration layer's own arguments
    assert all(k.startswith("arguments.integrat") for k, _, _ in diff)  # same tensors: only arguments differ
    wide = network_definition(MCVoxelMorph(**{**SMALL, "encoder_channels": (8, 8)}))
    assert any(k.startswith("tensors.") for k, _, _ in fingerprint_differences(d, wide))
    with pytest.raises(TypeError, match="network"):
        network_definition("not a module")


def test_identity_state_and_load(tmp_path):
    (tmp_path / "d.json").write_text("{}")
    net = nn.Linear(2, 1)
    values = {"method": "vm", "spatial_size": (32, 32, 32), "t": torch.tensor([1.0])}
    identity = RunIdentity(values, net, tmp_path / "d.json")
    fp = identity.fingerprint
    assert fp["spatial_size"] == [32, 32, 32] and fp["t"] == [1.0]
    assert fp["datalist"] == str(tmp_path / "d.json") and len(fp["datalist_sha256"]) == 64
    assert fp["network"]["tensors"] == {"weight": [1, 2], "bias": [1]}
    torch.save({"run_identity": identity.state_dict()}, tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)["run_identity"]  # plain types only
    assert state["digest"] == identity.digest
    identity.load_state_dict(state)  # the same identity loads
    other = RunIdentity({"method": "as_atc", "spatial_size": (32, 32, 32), "t": [1.0]}, net, tmp_path / "d.json")
    with pytest.raises(RunIdentityError, match="method: checkpoint 'vm', now 'as_atc'"):
        other.load_state_dict(state)
    with pytest.raises(TypeError, match="values"):
        RunIdentity({"bad": object()})
    with pytest.raises(TypeError, match="values"):
        RunIdentity(["method"])


def test_check_resume(tmp_path, caplog):
    identity = RunIdentity({"datalist_hint": "A", "spatial_size": [32, 32, 32], "k1": 5.0})
    path = tmp_path / "vm_checkpoint_epoch=1.pt"
    torch.save({"run_identity": identity.state_dict(), "model": {}}, path)
    before = path.read_bytes()
    with caplog.at_level(logging.INFO, logger="mtreg_monai.handlers.run_identity"):
        RunIdentity({"spatial_size": [32, 32, 32], "k1": 5, "datalist_hint": "A"}).check_resume(path)
    assert identity.digest in caplog.text
    changed = RunIdentity({"datalist_hint": "B", "spatial_size": [48, 48, 32], "k1": 5.0})
    with pytest.raises(RunIdentityError) as info:
        changed.check_resume(path)
    msg = str(info.value)
    assert str(path) in msg and "datalist_hint: checkpoint 'A', now 'B'" in msg
    assert "spatial_size: checkpoint [32, 32, 32], now [48, 48, 32]" in msg and "k1" not in msg
    assert "--resume False" in msg and "--ckpt_dir" in msg and str(tmp_path) in msg
    old = tmp_path / "old.pt"
    torch.save({"model": {}}, old)
    with pytest.raises(RunIdentityError, match="records no run identity"):
        identity.check_resume(old)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["old.pt", "vm_checkpoint_epoch=1.pt"]
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, ValueError)


def _saved(tmp_path, net: nn.Module, identity: bool = True) -> str:
    trainer = Engine(lambda e, b: None)
    trainer.run(range(3), max_epochs=2)
    ckpt = {"model": net.state_dict(), "trainer": trainer.state_dict()}
    if identity:
        ckpt["run_identity"] = RunIdentity({"method": "vm"}, network=net).state_dict()
    path = tmp_path / "model.pt"
    torch.save(ckpt, path)
    return str(path)


def test_loader_checks_network(tmp_path, caplog):
    torch.manual_seed(0)
    path = _saved(tmp_path, MCVoxelMorph(**SMALL))
    record = {"section": "test"}
    net = MCVoxelMorph(**SMALL)
    loader = SafeCheckpointLoader(path, {"model": net}, name="loader_test", check_network=True, record=record)
    engine = Engine(lambda e, b: None)
    with caplog.at_level(logging.INFO, logger="loader_test"):
        loader(engine)
    digest = RunIdentity({"method": "vm"}, network=net).digest
    assert f"epoch 2, iteration 6, run identity {digest}" in caplog.text and '"method": "vm"' in caplog.text
    expected = {"checkpoint": path, "checkpoint_epoch": 2, "checkpoint_iteration": 6, "checkpoint_run_identity": digest}
    assert loader.loaded == expected and engine.state.loaded_checkpoint == expected
    assert record == {"section": "test", **expected}
    assert checkpoint_identity(path)["epoch"] == 2 and checkpoint_identity(path)["run_identity"] == digest

    dif = MCVoxelMorph(integration_steps=7, **SMALL)  # same tensors: a state dict would load silently
    with pytest.raises(RunIdentityError) as info:
        SafeCheckpointLoader(path, {"model": dif}, check_network=True)(Engine(lambda e, b: None))
    msg = str(info.value)
    assert path in msg and "network.arguments.integration_steps: checkpoint 0, config 7" in msg
    assert "backbone.encoder" not in msg  # the differences, not a state-dict key dump
    SafeCheckpointLoader(path, {"model": dif})(Engine(lambda e, b: None))  # without the check it loads


def test_loader_without_identity_warns(tmp_path, caplog):
    path = _saved(tmp_path, nn.Linear(2, 1), identity=False)
    net = nn.Linear(2, 1)
    loader = SafeCheckpointLoader(path, {"model": net}, name="loader_old", check_network=True)
    with caplog.at_level(logging.WARNING, logger="loader_old"):
        loader(Engine(lambda e, b: None))
    assert "records no run identity" in caplog.text
    assert loader.loaded["checkpoint_run_identity"] is None and loader.loaded["checkpoint_epoch"] == 2
    with pytest.raises(CheckpointError, match="model.pt"):  # another network still fails on its state dict
        SafeCheckpointLoader(path, {"model": nn.Linear(3, 1)}, check_network=True)(Engine(lambda e, b: None))
    with pytest.raises(TypeError, match="record"):
        SafeCheckpointLoader(path, {"model": net}, record=("not", "a", "mapping"))
