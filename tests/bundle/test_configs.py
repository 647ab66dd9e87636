"""The bundle's configs as MONAI's workflow API and the model zoo read them: properties, standalone inference, ids.

- ``inference.json`` runs alone (the zoo's CI and MONAI Label read it without ``train.json``): every reference in it
  resolves in it, and each definition it repeats from ``train.json`` equals ``train.json``'s.
- ``check_properties()`` of MONAI's workflows finds nothing missing for each documented combination.
- No config reaches into a list by position (``#5``) or into an object's private attribute (``._x``).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, create_workflow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
SMALL_NET = json.loads((Path(__file__).parent / "small_network.json").read_text())  # a tiny network, for speed
# the hook's check (grep -lE '#[0-9]|[@A-Za-z]\._[a-z]' bundle/configs/*.json): a list position or a private attribute
FORBIDDEN = re.compile(r"#[0-9]|[@A-Za-z]\._[a-z]")
# ids inference.json and train.json both define but differently, each for a reason (see bundle/docs/README.md)
DIFFERENT_ON_PURPOSE = {
    "datalist_file": "inference reads the datalist training made (the phantom's) instead of generating one",
    "imports": "inference imports a subset of train.json's modules (checked below)",
    "initialize": "each workflow's own start",
    "run": "each workflow's own run",
}
# (config files, MONAI workflow type): the combinations the bundle manual documents
COMBINATIONS = [
    (["train.json"], "train"),
    (["inference.json"], "infer"),
    (["train.json", "evaluate.json"], "infer"),
]


def _load(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.json")))
def test_no_positional_or_private_reference(name):
    text = (CONFIGS / name).read_text()
    bad = [line.strip() for line in text.splitlines() if FORBIDDEN.search(line)]
    assert not bad, f"{name} refers to a list position or a private attribute: {bad}"


def test_forbidden_pattern_catches_what_it_should():
    for bad in ('"@train#common_handlers#5"', '"train#handlers#0#_disabled_"', '"$@validate#best._key_metric"'):
        assert FORBIDDEN.search(bad), bad
    for good in ('"@train#stats"', '"$@train#teacher.teacher"', '"$os.path.isdir(@x)"', '"$@cir_weight_range[0]"'):
        assert not FORBIDDEN.search(good), good


def test_repeated_definitions_equal_train():
    """What inference.json repeats from train.json (network_def and what it needs, paths, device) cannot drift."""
    train, infer = _load("train.json"), _load("inference.json")
    shared = sorted(set(train) & set(infer))
    assert {"network_def", "network", "method", "methods", "method_cfg", "device", "bundle_root"} <= set(shared)
    for key in shared:
        if key not in DIFFERENT_ON_PURPOSE:
            assert infer[key] == train[key], f"inference.json's {key!r} differs from train.json's"
    assert set(infer["imports"]) <= set(train["imports"])


def test_inference_json_is_standalone():
    """Every ``@id`` and ``%id`` in inference.json names an id of inference.json; no macro reads another file."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    text = (CONFIGS / "inference.json").read_text()
    refs = set(re.findall(r"[@%]([A-Za-z_][\w#]*)", text))
    assert refs, "no references found: the pattern is wrong"
    missing = sorted(r for r in refs if r not in parser)
    assert not missing, f"inference.json uses ids it does not define: {missing}"
    assert not re.search(r"%[^\"#]*\.(json|yaml)", text), "inference.json reads another config file"
    for key in ("bundle_root", "device", "network_def", "dataset_dir", "dataset", "inferer", "postprocessing",
                "evaluator", "checkpoint_loader", "handlers", "initialize", "run", "finalize"):  # fmt: skip
        assert key in parser, key


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> Path:
    from mtreg_monai.data import make_phantom_dataset

    tmp = tmp_path_factory.mktemp("configs")
    return Path(make_phantom_dataset(tmp / "phantom", num_pairs=3, spatial_size=(32, 32, 32), num_val=1, num_test=1))


@pytest.mark.parametrize("files,workflow_type", COMBINATIONS)
def test_workflow_properties(files, workflow_type, datalist, tmp_path):
    """``monai.bundle.create_workflow(..., workflow_type=...)``: no required property missing, no optional one wrong."""
    wf = create_workflow(
        config_file=[str(CONFIGS / f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        workflow_type=workflow_type,
        bundle_root=str(tmp_path),
        datalist=str(datalist),
        **SMALL_NET,
    )
    assert wf.check_properties() == []
    assert os.path.samefile(wf.dataset_dir, datalist.parent)
    engine = wf.trainer if workflow_type == "train" else wf.evaluator
    inferer = wf.train_inferer if workflow_type == "train" else wf.inferer
    assert engine.inferer is inferer  # the inferer the property names is the one the engine calls


MULTI_GPU_CHECK = r"""
import json, sys
from monai.bundle import create_workflow
configs, bundle_root, datalist, small = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
wf = create_workflow(
    config_file=[configs + "/train.json", configs + "/multi_gpu_train.json"], meta_file=configs + "/metadata.json",
    logging_file=False, workflow_type="train", bundle_root=bundle_root, datalist=datalist, **small,
)
missing = wf.check_properties()
wf.finalize()
print("MISSING=" + json.dumps(missing))
"""


def test_multi_gpu_workflow_properties(datalist, tmp_path):
    """train.json + multi_gpu_train.json as a train workflow, in a one-process gloo group (what torchrun would set)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-c", MULTI_GPU_CHECK, str(CONFIGS), str(tmp_path), str(datalist), json.dumps(SMALL_NET)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MISSING=[]" in proc.stdout.splitlines()


@pytest.mark.parametrize(
    "num_train, overrides, expected",
    [
        (30, {}, (20, 2, 5)),  # the quick-start: 600 steps of 30 pairs
        (8, {}, (75, 7, 18)),  # the hard preset's 8 pairs: the same budget in more epochs
        (8, {"num_steps": 100, "batch_size": 3}, (34, 3, 8)),  # 3 steps per epoch
        (8, {"epochs": 5}, (5, 1, 1)),  # an explicit epochs overrides the budget
    ],
)
def test_schedule_from_step_budget(tmp_path, num_train, overrides, expected):
    """``epochs``, ``val_interval`` and ``lr_decay_epochs`` follow ``num_steps`` and the number of training pairs."""
    items = [{f"{r}_{k}": f"{r}{i}_{k}.nii.gz" for r in ("fixed", "moving") for k in ("image", "label")}
             for i in range(num_train)]  # fmt: skip
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": items, "validation": [], "test": []}))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"bundle_root": str(tmp_path), "datalist": str(path), **overrides})
    got = tuple(parser.get_parsed_content(k) for k in ("epochs", "val_interval", "lr_decay_epochs"))
    assert got == expected
