"""Deployable artefacts: TorchScript export usable with torch alone, metadata and network checks offline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import verify_metadata, verify_net_in_out
from monai.networks.blocks import Warp

from mtreg_monai.networks import MCVoxelMorph

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"

# runs in a Python where importing monai or mtreg_monai fails: only torch is available
TORCH_ONLY = r'''
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("monai", "mtreg_monai"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import torch
import torch.nn.functional as F

def warp(image, ddf):
    """moving(x + ddf(x)), ddf in voxels, channel i along axis i (MONAI Warp, align_corners=True)."""
    shape = ddf.shape[2:]
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=ddf.dtype) for s in shape], indexing="ij"))
    grid = (grid.unsqueeze(0) + ddf).movedim(1, -1)
    grid = torch.stack([grid[..., i] * 2 / (s - 1) - 1 for i, s in enumerate(shape)], dim=-1).flip(-1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)

model = torch.jit.load(sys.argv[1])
pair = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    ddf = model(torch.cat([pair["moving"], pair["fixed"]], dim=1))
    torch.save({"ddf": ddf, "warped": warp(pair["moving"], ddf)}, sys.argv[3])
try:
    import monai
    raise SystemExit("monai should not be importable here")
except ImportError:
    pass
'''


@pytest.fixture(scope="module")
def exported(trained_bundle, tmp_path_factory) -> Path:
    ts = tmp_path_factory.mktemp("export") / "model.ts"
    cmd = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", str(ts), "--ckpt_file", str(trained_bundle / "models" / "model.pt"),
        "--meta_file", str(CONFIGS / "metadata.json"), "--config_file", str(CONFIGS / "inference.json"),
        "--key_in_ckpt", "model", "--use_trace", "True", "--input_shape", "[1, 2, 32, 32, 32]",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    assert ts.is_file()
    return ts


def test_torchscript_registers_a_pair_without_monai(exported, trained_bundle, tmp_path):
    torch.manual_seed(0)
    pair = {"moving": torch.rand(1, 1, 64, 64, 48), "fixed": torch.rand(1, 1, 64, 64, 48)}  # not the traced size
    torch.save(pair, tmp_path / "pair.pt")
    script = tmp_path / "torch_only.py"
    script.write_text(TORCH_ONLY)
    subprocess.run(
        [sys.executable, str(script), str(exported), str(tmp_path / "pair.pt"), str(tmp_path / "out.pt")], check=True
    )
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    net = MCVoxelMorph(dropout=0.2).eval()
    net.load_state_dict(torch.load(trained_bundle / "models" / "model.pt", weights_only=True)["model"])
    with torch.no_grad():
        ddf = net(torch.cat([pair["moving"], pair["fixed"]], dim=1))
        warped = Warp(padding_mode="border")(pair["moving"], ddf)
    torch.testing.assert_close(out["ddf"], ddf, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["warped"], warped, rtol=1e-4, atol=1e-5)


def test_export_embeds_metadata_and_inference_config(exported):
    """``ckpt_export`` from inference.json alone: metadata.json and the inference config ride in the TorchScript
    file."""
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(exported), _extra_files=extra)
    meta, shipped = json.loads(extra["metadata.json"]), json.loads((CONFIGS / "metadata.json").read_text())
    for key in ("version", "network_data_format", "eval_metrics"):
        assert meta[key] == shipped[key], key
    assert json.loads(extra["inference.json"]) == json.loads((CONFIGS / "inference.json").read_text())


def test_verify_net_in_out():
    """The model zoo's shape check, on configs/inference.json alone (as its CI runs it)."""
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        bundle_root=str(ROOT / "bundle"),
    )


def test_verify_metadata_offline(tmp_path):
    schema = str(CONFIGS / "metadata_schema.json")
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=schema)  # no download: the file exists
    broken = json.loads((CONFIGS / "metadata.json").read_text())
    del broken["task"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="task"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=schema)
