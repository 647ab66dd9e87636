"""Does the teacher's MC-dropout uncertainty point at the registration error? One AS+ATC model per dropout setting.

Run (figures in docs/metrics.md)::

    python benchmarks/uncertainty_error.py                       # 64x64x48, 20 epochs, 6 settings, 15 test pairs
    python benchmarks/uncertainty_error.py --settings head_0p2 all_0p1 --spatial_size 32 32 32 --epochs 2 \\
        --num_pairs 6 --num_val 1 --num_test 2 --out /tmp/ue --work /tmp/ue/work      # smoke run

For each dropout setting (``--dropout_scope`` and ``--dropout`` of ``mtreg_monai.networks.MCVoxelMorph``) an AS+ATC
model is trained with the bundle's own command (``benchmarks/table1.py``'s ``train_row``: a child process
``python -m monai.bundle run training`` with its own ``bundle_root``), on the embedded phantom dataset, whose
datalist items carry the true displacement (``true_ddf``). Then, on the ``--section`` pairs, the teacher of the
last checkpoint (``--checkpoint final``; ``best``: the best-validation one) draws ``num_mc_samples`` displacements
and warped images exactly as in training (``mc_predictions``; N, ``ddf_floor`` and ``image_floor`` from
``bundle/configs/train.json``) and the script reports, per pair and as mean +- sample std over the pairs:

- Spearman(U_phi, ||ddf - ddf_true||): U_phi reduced to its per-voxel L2 norm over the 3 axes, the error that of
  the teacher's prediction (the MC mean displacement, the ``teacher_ddf`` the bundle uses), in voxels;
- Spearman(U_I, |warp(moving, ddf) - warp(moving, ddf_true)|): the warped-image uncertainty against the intensity
  error of the teacher's warped image with respect to the moving image warped with the true displacement;

each for three uncertainty definitions (``cov``: the bundle's ``coefficient_of_variation`` with the configured
floor; ``raw``: the paper's ``|sigma/mu|`` with no floor, infinite where the mean is 0 and the samples differ, 0
where they agree; ``sigma``: the standard deviation alone) and two voxel sets (``all``; ``body``: soft tissue, the
moving CT warped with the true displacement above 0.1 in [0, 1] units, -150 HU). The calibration curve (mean error
per uncertainty decile, ``cov``, pooled over the pairs) and the seconds per training step of ``vm`` and ``as_atc``
with the same network setting, measured side by side (``benchmarks/step_time.py``'s runner, median over interleaved
rounds), complete each row.

Outputs (``--out``, default ``docs``): ``results/uncertainty_error.csv`` (one row per setting),
``results/uncertainty_error_pairs.csv``, ``results/uncertainty_error_calibration.csv``,
``results/uncertainty_error.json`` (settings, environment, everything above) and
``figures/uncertainty_calibration.png``. Each finished setting is recorded in ``<work>/settings/<name>.json`` and
skipped on the next run with the same configuration, so an interrupted run resumes (``--recompute`` to redo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtreg_monai.metrics import finite_summary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_info  # noqa: E402
from table1 import bundle_parser, common_overrides, make_dataset, train_row, write_csv  # noqa: E402

#: setting name -> (dropout_scope, dropout); ``head_0p2`` is the bundle's default
SETTINGS: dict[str, tuple[str, float]] = {
    "head_0p1": ("head", 0.1),
    "head_0p2": ("head", 0.2),
    "head_0p4": ("head", 0.4),
    "decoder_0p1": ("decoder", 0.1),
    "decoder_0p2": ("decoder", 0.2),
    "all_0p1": ("all", 0.1),
}
UNCERTAINTIES = ("cov", "raw", "sigma")
MASKS = ("all", "body")
#: soft-tissue threshold of the (window-scaled) CT warped with the true displacement: -200 + 0.1 * 500 = -150 HU
BODY_THRESHOLD = 0.1


def setting_name(scope: str, p: float) -> str:
    return f"{scope}_{p:g}".replace(".", "p")


def parse_setting(name: str) -> tuple[str, float]:
    """``head_0p2`` -> ``("head", 0.2)``; any ``<scope>_<p>`` with a scope of ``DROPOUT_SCOPES`` and 0 < p < 1."""
    from mtreg_monai.networks.nets.mc_voxelmorph import DROPOUT_SCOPES

    if name in SETTINGS:
        return SETTINGS[name]
    scope, _, p = name.partition("_")
    try:
        value = float(p.replace("p", "."))
    except ValueError:
        value = math.nan
    if scope not in DROPOUT_SCOPES or not 0 < value < 1:
        raise ValueError(
            f"--settings: expecting names like 'head_0p2' (scope in {DROPOUT_SCOPES}, 0 < p < 1), instead got {name!r}."
        )
    return scope, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), help="dropout settings, e.g. head_0p2 all_0p1")
    ap.add_argument("--spatial_size", nargs=3, type=int, default=[64, 64, 48], help="multiples of 16")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--num_pairs", type=int, default=50)
    ap.add_argument("--num_val", type=int, default=5)
    ap.add_argument("--num_test", type=int, default=15)
    ap.add_argument("--section", choices=["test", "validation"], default="test", help="datalist section scored")
    ap.add_argument("--max_eval_pairs", type=int, default=0, help="score at most this many pairs (0: all)")
    ap.add_argument("--checkpoint", choices=["final", "best"], default="final", help="teacher of which checkpoint")
    ap.add_argument("--num_bins", type=int, default=10, help="calibration bins (uncertainty quantiles)")
    ap.add_argument("--step_time_steps", type=int, default=20, help="steps per round of the step-time measurement")
    ap.add_argument("--step_time_rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder of results/ and figures/ (default docs)")
    ap.add_argument("--work", default="", help="work folder (default benchmarks/out/uncertainty_error_<size>)")
    ap.add_argument("--retrain", action="store_true", help="train again even when a training finished")
    ap.add_argument("--recompute", action="store_true", help="score again even when a setting finished")
    args = ap.parse_args()
    if any(s % 16 for s in args.spatial_size):
        raise ValueError(
            f"--spatial_size: expecting multiples of 16 (the true ddf is not padded), got {args.spatial_size}.")
    settings = {name: parse_setting(name) for name in args.settings}
    size = "x".join(map(str, args.spatial_size))
    work = Path(args.work or ROOT / "benchmarks" / "out" / f"uncertainty_error_{size}").resolve()
    out = Path(args.out).resolve()
    (work / "settings").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    cfg = {"spatial_size": list(args.spatial_size), "epochs": args.epochs, "num_pairs": args.num_pairs,
           "num_val": args.num_val, "num_test": args.num_test, "seed": args.seed}
    overrides = common_overrides(cfg, work)
    started = time.time()
    datalist = make_dataset(overrides)
    print(f"[uncertainty_error] dataset {datalist}, {cfg}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for name, (scope, p) in settings.items():
        record = work / "settings" / f"{name}.json"
        key = {**cfg, "dropout_scope": scope, "dropout": p, "section": args.section, "checkpoint": args.checkpoint,
               "max_eval_pairs": args.max_eval_pairs, "num_bins": args.num_bins,
               "step_time": [args.step_time_steps, args.step_time_rounds]}
        if record.is_file() and not (args.recompute or args.retrain):
            previous = json.loads(record.read_text())
            if previous.get("key") == key:
                print(f"[uncertainty_error] {name}: finished before ({record}), skipped", flush=True)
                results[name] = previous
                continue
        t = time.time()
        spec = {"overrides": {"method": "as_atc", "dropout_scope": scope, "dropout": p}}
        trained = train_row(f"as_atc_{name}", spec, overrides, work, args.retrain, args.threads)
        scored = score_setting(name, spec, overrides, work, datalist, args)
        steps = step_seconds(work, args, {"dropout_scope": scope, "dropout": p})
        results[name] = {"key": key, "setting": name, "dropout_scope": scope, "dropout": p, "train": trained,
                         "step_time": steps, **scored, "seconds": time.time() - t}
        tmp = record.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results[name], indent=1, default=float))
        tmp.replace(record)
        print(f"[uncertainty_error] {name}: done in {time.time() - t:.0f} s, {summary_line(results[name])}",
              flush=True)
    write_outputs(out, results, args, cfg, time.time() - started)
    print(f"[uncertainty_error] done in {(time.time() - started) / 60:.1f} min, outputs in {out}", flush=True)


def summary_line(res: Mapping[str, Any]) -> str:
    s = res["summary"]
    return (f"rho(U_phi, err) {s['rho_phi_cov_all_mean']:.3f}, rho(U_I, err) {s['rho_image_cov_all_mean']:.3f}, "
            f"s/step vm {res['step_time']['vm']:.3f} as_atc {res['step_time']['as_atc']:.3f}")


def load_eval_pairs(parser, datalist: str, section: str, limit: int) -> list[dict[str, Any]]:
    """The ``section`` pairs through the bundle's preprocessing, with ``true_ddf`` (3, H, W, D) loaded beside."""
    from monai.transforms import LoadImaged
    from monai.utils import convert_to_tensor

    from mtreg_monai.data import load_registration_datalist

    items = load_registration_datalist(datalist, section)
    if limit > 0:
        items = items[:limit]
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    load_ddf = LoadImaged(keys="true_ddf", ensure_channel_first=True, image_only=True)
    pairs = []
    for i, item in enumerate(items):
        if "true_ddf" not in item:
            raise ValueError(f"datalist '{datalist}' section {section!r} item {i} has no 'true_ddf' key.")
        path = item.pop("true_ddf")
        path = path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(datalist)), path)
        data = preprocessing(item)
        true_ddf = convert_to_tensor(load_ddf({"true_ddf": path})["true_ddf"], track_meta=False).float()
        expected = (3, *data["fixed_image"].shape[1:])
        if tuple(true_ddf.shape) != expected:
            raise ValueError(
                f"true_ddf '{path}' loads as {tuple(true_ddf.shape)}, expecting {expected} (the pair's grid).")
        pairs.append({"name": os.path.basename(item["fixed_image"]), "true_ddf": true_ddf,
                      **{k: convert_to_tensor(data[k], track_meta=False).float() for k in
                         ("fixed_image", "moving_image", "fixed_label", "moving_label")}})
    return pairs


def score_setting(name: str, spec: Mapping[str, Any], overrides: Mapping[str, Any], work: Path, datalist: str,
                  args) -> dict[str, Any]:
    """Per-pair Spearman correlations and pooled calibration curves of one trained setting's teacher."""
    from monai.networks.blocks import Warp

    from mtreg_monai.handlers import MeanTeacherHandler, load_checkpoint
    from mtreg_monai.handlers.uncertainty import mc_predictions
    from mtreg_monai.metrics import calibration_curve, compute_label_dice, registration_error, spearman_correlation

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = work / "runs" / f"as_atc_{name}"
    parser = bundle_parser(["train.json", "evaluate.json"], {
        **overrides, **spec["overrides"], "bundle_root": str(root), "eval_section": args.section, "device": device})
    net = parser.get_parsed_content("network_def").to(device)
    ckpt_path = root / "models" / ("model_final.pt" if args.checkpoint == "final" else "model.pt")
    ckpt = load_checkpoint(ckpt_path, map_location=device)
    if "teacher" not in ckpt:
        raise ValueError(f"checkpoint '{ckpt_path}' has no 'teacher' entry (keys {sorted(ckpt)}).")
    net.load_state_dict(MeanTeacherHandler.teacher_weights(ckpt["teacher"]))
    num_samples = int(parser.get_parsed_content("num_mc_samples"))
    floors = {"phi": parser.get_parsed_content("ddf_floor"), "image": parser.get_parsed_content("image_floor")}
    labels = parser.get_parsed_content("label_map")
    warp, warp_nearest = Warp(mode="bilinear", padding_mode="border"), Warp(mode="nearest", padding_mode="border")
    pairs = load_eval_pairs(parser, datalist, args.section, args.max_eval_pairs)
    torch.manual_seed(args.seed)
    rows, pooled = [], {"phi": [], "image": [], "err_phi": [], "err_image": [], "body": []}
    for pair in pairs:
        moving, fixed = pair["moving_image"][None].to(device), pair["fixed_image"][None].to(device)
        true_ddf = pair["true_ddf"][None].to(device)
        ddfs, warped = mc_predictions(net, moving, fixed, num_samples, warp)
        ddf, maps_phi = uncertainty_maps(ddfs, floors["phi"])
        _, maps_image = uncertainty_maps(warped, floors["image"])
        maps = {"phi": maps_phi, "image": maps_image}
        with torch.no_grad():
            true_warped = warp(moving, true_ddf)
            errors = {"phi": registration_error(ddf, true_ddf), "image": (warp(moving, ddf) - true_warped).abs()}
            masks = {"all": None, "body": true_warped > BODY_THRESHOLD}
            moving_label = pair["moving_label"][None].to(device)
            fixed_label = pair["fixed_label"][None].to(device).long()
            dice = {f"dice_{which}": float(torch.nanmean(compute_label_dice(
                warp_nearest(moving_label, d).round().long(), fixed_label, labels)))
                for which, d in (("pred", ddf), ("true", true_ddf))}
        row: dict[str, Any] = {"setting": name, "pair": pair["name"], **dice,
                               "error_phi_mean": float(errors["phi"].mean()),
                               "error_image_mean": float(errors["image"].mean()),
                               "body_fraction": float(masks["body"].float().mean())}
        for kind in ("phi", "image"):
            for u in UNCERTAINTIES:
                for m in MASKS:
                    rho = spearman_correlation(maps[kind][u], errors[kind], mask=masks[m])
                    row[f"rho_{kind}_{u}_{m}"] = float(rho[0])
        rows.append(row)
        for kind in ("phi", "image"):
            pooled[kind].append(torch.linalg.vector_norm(maps[kind]["cov"].float(), dim=1, keepdim=True).cpu())
            pooled[f"err_{kind}"].append(errors[kind].float().cpu())
        pooled["body"].append(masks["body"].cpu())
    body = torch.cat(pooled["body"])
    calibration = {}
    for kind in ("phi", "image"):
        for m, mask in (("all", None), ("body", body)):
            c = calibration_curve(torch.cat(pooled[kind]), torch.cat(pooled[f"err_{kind}"]), num_bins=args.num_bins,
                                  mask=mask, pool_batch=True)
            calibration[f"{kind}_{m}"] = {f: getattr(c, f)[0].tolist() for f in c._fields}
    summary: dict[str, Any] = {"n_pairs": len(rows)}
    for col in rows[0]:
        if col in ("setting", "pair"):
            continue
        s = finite_summary([r[col] for r in rows])
        summary[f"{col}_mean"], summary[f"{col}_std"] = s.mean, s.std
    return {"pairs": rows, "calibration": calibration, "summary": summary, "num_mc_samples": num_samples,
            "floors": floors, "checkpoint": str(ckpt_path)}


def uncertainty_maps(samples: torch.Tensor, floor: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MC mean and the three uncertainty maps of ``(N, B, C, ...)`` samples: ``cov`` (the bundle's
    ``coefficient_of_variation`` with ``floor``), ``raw`` (``|sigma / mu|``: inf where mu = 0 < sigma, 0 where the
    samples agree, sigma = 0), ``sigma``."""
    from mtreg_monai.handlers.uncertainty import coefficient_of_variation

    mean, cov = coefficient_of_variation(samples, floor=None if floor is None else float(floor))
    sigma = (samples.float() - mean).square().sum(0).div(samples.shape[0] - 1).sqrt()
    raw = torch.where(sigma > 0, sigma / mean.abs(), torch.zeros_like(sigma))
    return mean, {"cov": cov, "raw": raw, "sigma": sigma}


def step_seconds(work: Path, args, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Median seconds per training step of ``vm`` and ``as_atc`` with this network setting, interleaved rounds."""
    from step_time import make_step_runner

    runners = {}
    for method in ("vm", "as_atc"):
        runners[method] = make_step_runner(method, str(work / "step_time"), list(args.spatial_size), dict(extra))
        runners[method](2)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in runners}
    for _ in range(args.step_time_rounds):
        for method, run in runners.items():
            times[method] += run(args.step_time_steps)
    res: dict[str, Any] = {m: statistics.median(t) for m, t in times.items()}
    res["ratio"] = res["as_atc"] / res["vm"]
    res["steps"] = {m: len(t) for m, t in times.items()}
    return res


def write_outputs(out: Path, results: Mapping[str, Mapping[str, Any]], args, cfg, seconds: float) -> None:
    res_dir, fig_dir = out / "results", out / "figures"
    res_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    table = []
    for name, r in results.items():
        tr = r.get("train", {})
        table.append({"setting": name, "dropout_scope": r["dropout_scope"], "dropout": r["dropout"],
                      **r["summary"], "step_seconds_vm": r["step_time"]["vm"],
                      "step_seconds_as_atc": r["step_time"]["as_atc"], "step_ratio": r["step_time"]["ratio"],
                      "train_seconds": tr.get("train_seconds", math.nan), "train_steps": tr.get("steps", 0)})
    write_csv(res_dir / "uncertainty_error.csv", table)
    write_csv(res_dir / "uncertainty_error_pairs.csv", [p for r in results.values() for p in r["pairs"]])
    calib = []
    for name, r in results.items():
        for curve, c in r["calibration"].items():
            for b in range(len(c["count"])):
                calib.append({"setting": name, "curve": curve, "bin": b, "mean_uncertainty": c["uncertainty"][b],
                              "mean_error": c["error"][b], "count": c["count"][b], "edge_low": c["edges"][b],
                              "edge_high": c["edges"][b + 1]})
    write_csv(res_dir / "uncertainty_error_calibration.csv", calib)
    info = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "work")}, "settings": cfg,
            "total_minutes": seconds / 60.0, "date": time.strftime("%Y-%m-%d %H:%M"),
            **environment_info("cuda" if torch.cuda.is_available() else "cpu")}
    (res_dir / "uncertainty_error.json").write_text(
        json.dumps({"info": info, "summary": table, "results": results}, indent=1, default=float))
    plot_calibration(results, fig_dir / "uncertainty_calibration.png")


def plot_calibration(results: Mapping[str, Mapping[str, Any]], path: Path) -> str:
    """Mean error per uncertainty decile (soft tissue, pooled over the pairs), one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind, title, unit in ((axes[0], "phi", "U_phi (L2 norm over axes)", "||ddf - ddf_true|| (voxels)"),
                                  (axes[1], "image", "U_I", "|warped - warped_true| (intensity)")):
        for name, r in results.items():
            c = r["calibration"][f"{kind}_body"]
            x = np.arange(1, len(c["error"]) + 1)
            rho = r["summary"][f"rho_{kind}_cov_body_mean"]
            ax.plot(x, np.asarray(c["error"], dtype=float), marker="o", label=f"{name} (rho {rho:.2f})")
        ax.set_xlabel("uncertainty quantile bin (low -> high)")
        ax.set_ylabel(f"mean {unit}")
        ax.set_title(f"{title}: calibration in soft tissue", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    main()
