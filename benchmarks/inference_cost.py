"""Cost of registering one pair: the trained student vs ANTs SyN and elastix, plus the training step, per size.

Run (all measurements at the quick-start size and at the paper's size)::

    python benchmarks/inference_cost.py --sizes 64 64 48 176 176 128 --threads 2 \
        --json docs/results/inference_cost.json

For each ``--sizes`` entry (groups of 3 ints, multiples of 16) one synthetic CT-MR pair is generated
(``mtreg_monai.data.make_phantom_pair(size, seed=--seed)``, the bundle's field of view), written as NIfTI and put
through the bundle's preprocessing (``registration_pair_transforms``, so every method sees the intensities the
network is trained on), then measured on that same pair:

- ``student``: the network of ``bundle/configs/train.json`` (``--method``, default ``as_atc``; weights from
  ``--checkpoint`` or random: the time does not depend on the weight values), eval mode, ``torch.no_grad``,
  forward on ``cat([moving, fixed])`` + warping the moving image with MONAI ``Warp``, as
  ``RegistrationEvaluator`` times it; 1 warm-up, median of ``--repeats``;
- ``syn`` / ``elastix``: ``benchmarks/classical.py``'s ``ANTsSyN`` / ``ElastixBSpline`` (voxel size given in mm,
  ``--threads`` ITK threads) followed by the same warp; median of ``--classical_repeats`` runs, no warm-up;
- ``train_<method>`` for each ``--train_methods``: seconds per training step of the bundle's trainer
  (``benchmarks/step_time.py``'s ``make_step_runner``, on a 3-pair phantom dataset of the same size);
  1 warm-up, median of ``--train_steps``.

Every measurement of every size runs in its own child process (this script re-invoked with ``--_child``), so its
peak resident memory is its own: ``ru_maxrss`` of that child from ``os.wait4``. It includes the interpreter and
the imports (about 0.3-0.5 GiB); ``rss_before_mib`` in the JSON is the child's resident memory just before the
measurement (after imports, data loading and model building). With CUDA the peak of
``torch.cuda.max_memory_allocated`` is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import environment_info, run_measured  # benchmarks/ is sys.path[0] when run as a script

ROOT = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = ROOT / "bundle" / "configs" / "train.json"
MARKER = "@@inference_cost@@ "
LABELS = {"student": "student", "syn": "ANTs SyN", "elastix": "elastix B-spline"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=[64, 64, 48, 176, 176, 128],
        help="volume sizes, flat list of ints in groups of 3 (H W D ...), each a multiple of 16",
    )
    ap.add_argument("--method", default="as_atc", help="variant whose network is timed (train.json 'method')")
    ap.add_argument("--checkpoint", default="", help="model.pt written by training (default: random weights)")
    ap.add_argument("--repeats", type=int, default=3, help="timed student runs after 1 warm-up")
    ap.add_argument("--classical_repeats", type=int, default=1, help="timed runs of SyN and elastix")
    ap.add_argument("--elastix", action=argparse.BooleanOptionalAction, default=True, help="also time elastix")
    ap.add_argument("--train_methods", nargs="+", default=["vm", "as_atc"])
    ap.add_argument("--train_steps", type=int, default=3, help="timed training steps after 1 warm-up")
    ap.add_argument("--threads", type=int, default=2, help="torch threads and ITK threads of every child")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0, help="seed of make_phantom_pair")
    ap.add_argument(
        "--field_of_view", nargs=3, type=float, default=None, help="mm; default the bundle's phantom#field_of_view"
    )
    ap.add_argument("--skip", nargs="*", default=[], choices=["student", "syn", "elastix", "train"])
    ap.add_argument("--override", default="{}", help="JSON dict of extra config overrides of the trainers")
    ap.add_argument("--json", default="", help="write the results to this JSON file")
    ap.add_argument("--_child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--_size", nargs=3, type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_workdir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if len(args.sizes) % 3:
        ap.error(f"--sizes takes groups of 3 ints (H W D), got {len(args.sizes)} values.")
    sizes = [args.sizes[i : i + 3] for i in range(0, len(args.sizes), 3)]
    if any(s < 16 or s % 16 for size in sizes for s in size):
        ap.error(f"every size must be a multiple of 16 (the network's 4 levels), got {sizes}.")
    if min(args.repeats, args.classical_repeats, args.train_steps, args.threads) < 1:
        ap.error("--repeats, --classical_repeats, --train_steps and --threads must be >= 1.")
    config = json.loads(TRAIN_CONFIG.read_text())
    if args.field_of_view is None:
        args.field_of_view = [float(f) for f in config["phantom"]["field_of_view"]]
    if args._child:
        return run_child(args)

    kinds = [k for k in ("student", "syn", "elastix") if k not in args.skip and (k != "elastix" or args.elastix)]
    if "train" not in args.skip:
        kinds += [f"train_{m}" for m in args.train_methods]
    extra = json.loads(args.override)
    results = []
    with tempfile.TemporaryDirectory(prefix="inference_cost_") as tmp:
        for size in sizes:
            workdir = os.path.join(tmp, "x".join(map(str, size)))
            os.makedirs(workdir)
            t = time.perf_counter()
            spacing = prepare_pair(workdir, size, args, config)
            if any(k.startswith("train_") for k in kinds):
                prepare_training_data(workdir, size, config, extra)
            print(f"[{'x'.join(map(str, size))}] data ready in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            row = {"spatial_size": size, "spacing_mm": spacing, "measurements": {}}
            for kind in kinds:
                print(f"[{'x'.join(map(str, size))}] {kind} ...", file=sys.stderr, flush=True)
                row["measurements"][kind] = run_in_child(kind, size, workdir)
            m = row["measurements"]
            student = m.get("student", {}).get("seconds")
            for k in ("syn", "elastix"):
                sec = m.get(k, {}).get("seconds")
                row[f"ratio_{k}_to_student"] = sec / student if sec and student else None
            results.append(row)

    print_table(results, args)
    if args.json:
        report = {"args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
                  "environment": environment_info(args.device),
                  "rows": results}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


def prepare_pair(workdir: str, size: list[int], args: argparse.Namespace, config: dict) -> list[float]:
    """Generate the pair, save it as NIfTI, preprocess it as the bundle does and save the tensors to ``pair.pt``."""
    import nibabel as nib

    from mtreg_monai.data import make_phantom_pair
    from mtreg_monai.transforms import registration_pair_transforms

    pair = make_phantom_pair(spatial_size=size, seed=args.seed, field_of_view=args.field_of_view)
    item = {}
    for key in ("fixed_image", "moving_image"):
        image = nib.Nifti1Image(pair[key], pair["affine"])
        image.header.set_xyzt_units("mm")
        image.header.set_qform(pair["affine"], code=1)
        image.header.set_sform(pair["affine"], code=1)
        item[key] = os.path.join(workdir, f"{key}.nii.gz")
        nib.save(image, item[key])
    pre = registration_pair_transforms(
        fixed_modality=config["fixed_modality"], moving_modality=config["moving_modality"], spatial_size=size
    )
    out = pre(item)
    # plain tensors, as PrepareRegistrationBatch hands them to the network (a MetaTensor's metadata would not load
    # with weights_only)
    fixed, moving = (
        torch.Tensor(out[k].as_tensor() if hasattr(out[k], "as_tensor") else out[k]).float().contiguous()[None]
        for k in ("fixed_image", "moving_image")
    )
    if list(fixed.shape[2:]) != list(size):
        raise RuntimeError(f"preprocessed pair has shape {tuple(fixed.shape)}, expected (1, 1, {size}).")
    spacing = [float(f) / n for f, n in zip(args.field_of_view, size)]
    torch.save({"fixed": fixed, "moving": moving, "spacing": spacing}, os.path.join(workdir, "pair.pt"))
    return spacing


def train_overrides(extra: dict) -> dict:
    # 1 training pair (+1 validation, +1 test): the cached dataset stays small, the step does not depend on it
    return {"phantom#num_pairs": 3, "phantom#num_val": 1, "phantom#num_test": 1, **extra}


def prepare_training_data(workdir: str, size: list[int], config: dict, extra: dict) -> None:
    """Write the trainers' phantom dataset now, as the bundle would, so that the children only reuse it."""
    from mtreg_monai.data import make_phantom_dataset

    ov = train_overrides(extra)
    make_phantom_dataset(
        os.path.join(workdir, "phantom"), num_pairs=ov["phantom#num_pairs"], spatial_size=size,
        seed=ov.get("seed", config["seed"]),
        field_of_view=ov.get("phantom#field_of_view", config["phantom"]["field_of_view"]),
        num_val=ov["phantom#num_val"], num_test=ov["phantom#num_test"], reuse_existing=True,
    )  # fmt: skip


def run_in_child(kind: str, size: list[int], workdir: str) -> dict:
    """Run one measurement in a fresh process; its result plus that process's own peak RSS (``os.wait4``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    cmd += ["--_child", kind, "--_size", *map(str, size), "--_workdir", workdir]
    with tempfile.TemporaryFile("w+") as err:
        returncode, peak, stdout = run_measured(cmd, stdout=subprocess.PIPE, stderr=err)
        err.seek(0)
        stderr = err.read()
    lines = [line[len(MARKER) :] for line in stdout.splitlines() if line.startswith(MARKER)]
    if returncode != 0 or not lines:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        print(f"  {kind} failed (exit {returncode}):\n{tail}", file=sys.stderr)
        return {"error": f"exit {returncode}: {tail.splitlines()[-1] if tail else ''}", "peak_rss_mib": peak}
    out = json.loads(lines[-1])
    out["peak_rss_mib"] = peak
    return out


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def run_child(args: argparse.Namespace) -> None:
    """One measurement (``--_child``); prints its result as one JSON line after ``MARKER``."""
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    kind, size, workdir = args._child, list(args._size), args._workdir
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    result: dict = {"kind": kind, "device": str(device)}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    if kind.startswith("train_"):
        from step_time import make_step_runner

        method = kind[len("train_") :]
        extra = {**train_overrides(json.loads(args.override)), "device": f"$torch.device('{device}')"}
        run = make_step_runner(method, workdir, size, extra)
        result["rss_before_mib"] = _current_rss_mib()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        run(1)
        times = run(args.train_steps)
        result["unit"] = "step"
    else:
        from monai.networks.blocks import Warp

        pair = torch.load(os.path.join(workdir, "pair.pt"), weights_only=True)
        moving, fixed = pair["moving"].to(device), pair["fixed"].to(device)
        warp = Warp(mode="bilinear", padding_mode="border")  # RegistrationEvaluator's defaults
        if kind == "student":
            net = build_student(args, size, device)
            warmup, repeats = 1, args.repeats
            result["method"] = args.method
            result["weights"] = args.checkpoint or "random (timing does not depend on the weight values)"
        elif kind == "syn":
            from classical import ANTsSyN

            net, warmup, repeats = ANTsSyN(spacing=pair["spacing"], num_threads=args.threads), 0, args.classical_repeats
        elif kind == "elastix":
            from classical import ElastixBSpline

            net = ElastixBSpline(spacing=pair["spacing"], num_threads=args.threads)
            warmup, repeats = 0, args.classical_repeats
        else:
            raise ValueError(f"unknown measurement {kind!r}")
        net.eval()

        def once() -> float:
            sync()
            t = time.perf_counter()
            with torch.no_grad():
                ddf = net(torch.cat([moving, fixed], dim=1)).float()
                warp(moving.float(), ddf)
            sync()
            return time.perf_counter() - t

        result["rss_before_mib"] = _current_rss_mib()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            once()
        times = [once() for _ in range(repeats)]
        result["unit"] = "pair"
    result["seconds"] = statistics.median(times)
    result["times"] = times
    if cuda:
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    print(MARKER + json.dumps(result), flush=True)


def build_student(args: argparse.Namespace, size: list[int], device: torch.device) -> torch.nn.Module:
    """The bundle's ``network`` (train.json), with ``--checkpoint``'s weights when given."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN_CONFIG))
    bundle_root = tempfile.mkdtemp(prefix="bundle_", dir=args._workdir)
    for k, v in {"bundle_root": bundle_root, "spatial_size": size, "method": args.method,
                 "device": f"$torch.device('{device}')"}.items():  # fmt: skip
        parser[k] = v
    parser.parse()
    net = parser.get_parsed_content("network")
    if args.checkpoint:
        from mtreg_monai.handlers import load_checkpoint

        checkpoint = load_checkpoint(args.checkpoint, map_location=device)
        net.load_state_dict(checkpoint["model"] if "model" in checkpoint else checkpoint)
    return net


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    cuda = torch.device(args.device).type == "cuda"
    weights = args.checkpoint or "random weights (timing does not depend on the weight values)"
    print(f"device {args.device}, {args.threads} threads, student = {args.method} network, {weights}")
    print("peak RSS: each measurement in its own process (interpreter and imports included)")
    for row in results:
        size, sp = row["spatial_size"], row["spacing_mm"]
        print(f"\n{'x'.join(map(str, size))} voxels, spacing {' x '.join(f'{s:.3g}' for s in sp)} mm")
        head = (
            f"{'measurement':<18} {'seconds':>9} {'per':>5} {'x student':>10} {'peak RSS MiB':>13} {'RSS before':>11}"
        )
        print(head + (f" {'CUDA peak MiB':>14}" if cuda else ""))
        m = row["measurements"]
        student = m.get("student", {}).get("seconds")
        for kind, r in m.items():
            name = LABELS.get(kind, kind.replace("train_", "train "))
            if "error" in r:
                print(f"{name:<18} {'failed: ' + r['error']}")
                continue
            ratio = f"{r['seconds'] / student:.1f}" if student and r["unit"] == "pair" else ""
            line = f"{name:<18} {r['seconds']:>9.3f} {r['unit']:>5} {ratio:>10} {r['peak_rss_mib']:>13.0f}"
            line += f" {r['rss_before_mib']:>11.0f}"
            if cuda:
                line += f" {r.get('cuda_peak_mib', float('nan')):>14.0f}"
            print(line)
        for k in ("syn", "elastix"):
            if row.get(f"ratio_{k}_to_student"):
                print(f"{LABELS[k]} / student: {row[f'ratio_{k}_to_student']:.1f}x")


if __name__ == "__main__":
    sys.exit(main())
