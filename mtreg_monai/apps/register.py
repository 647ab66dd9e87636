"""``mtreg-register``: register one moving image to one fixed image with a trained bundle."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mtreg_monai.utils import write_text_atomic

__all__ = ["main", "default_bundle_dir", "register_pair"]

logger = logging.getLogger(__name__)


def default_bundle_dir() -> Path:
    """
    The bundle folder the package uses when none is given.

    From a source checkout (an editable install, or the repository on ``sys.path``) it is the checkout's top-level
    ``bundle/`` folder, so that weights trained into ``bundle/models`` are found. Otherwise (a wheel, a plain
    ``pip install``) it is the copy shipped inside the package, ``<site-packages>/mtreg_monai/bundle``: its configs,
    docs and license, but no weights (pass a checkpoint, see ``mtreg-register --checkpoint``).

    Returns:
        the folder; it holds ``configs/inference.json`` unless the installation is broken.
    """
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent
    # a checkout has setup.cfg beside the package: a folder named bundle/ next to site-packages/mtreg_monai is not one
    if (checkout / "setup.cfg").is_file() and (checkout / "bundle" / "configs" / "inference.json").is_file():
        return checkout / "bundle"
    return package / "bundle"


def register_pair(
    fixed: str,
    moving: str,
    out_dir: str,
    bundle_dir: str | os.PathLike | None = None,
    fixed_label: str | None = None,
    moving_label: str | None = None,
    checkpoint: str | None = None,
    fixed_modality: str = "mr",
    moving_modality: str = "ct",
    mc_uncertainty: bool = False,
    device: str | None = None,
    refine_steps: int = 0,
) -> str:
    """
    Register ``moving`` to ``fixed`` with the bundle's inference workflow and write the results into ``out_dir``.

    Runs the bundle's ``configs/inference.json`` alone as MONAI's inference workflow (``ConfigWorkflow`` with
    ``workflow_type="infer"``, whose required properties are checked first; the bundle's own, trusted configs:
    nothing from the image files is evaluated) on a one-pair datalist written to ``out_dir/datalist.json``. The
    results (see :class:`~mtreg_monai.handlers.RegistrationWriter`) are in ``out_dir/<moving>_to_<fixed>/``.

    ``refine_steps`` > 0 refines the network's displacement of the pair by that many steps of instance optimisation
    (MIND-SSC + smoothness, :class:`~mtreg_monai.inferers.RefinementInferer`, the config's ``inferer``).

    Returns:
        the folder of the results.

    Raises:
        FileNotFoundError: for a missing image, label, bundle folder or checkpoint.
        ValueError: when the pair cannot be registered (an unreadable or invalid image: the reason names the file).
        RuntimeError: when the bundle's inference config fails MONAI's inference workflow property check.
    """
    from monai.bundle import ConfigWorkflow

    if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
        raise ValueError(f"refine_steps must be an int >= 0, got {refine_steps!r}.")

    bundle = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    configs = bundle / "configs"
    if not (configs / "inference.json").is_file() or not (configs / "metadata.json").is_file():
        raise FileNotFoundError(
            f"No bundle at {bundle}: expected {configs}/inference.json and metadata.json (pass --bundle DIR)."
        )
    ckpt = Path(checkpoint) if checkpoint else bundle / "models" / "model.pt"
    inputs = {"fixed_image": fixed, "moving_image": moving, "fixed_label": fixed_label, "moving_label": moving_label}
    for key, path in inputs.items():
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"{key} {path!r} does not exist.")
    if not ckpt.is_file():
        hint = (
            ""
            if checkpoint
            else ": the package (and its wheel) carries no trained weights; pass --checkpoint PATH (a model.pt written "
            "by the bundle's training) or --bundle DIR of a bundle holding models/model.pt (e.g. an unpacked "
            "mtreg-archive zip)"
        )
        raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist{hint}.")
    os.makedirs(out_dir, exist_ok=True)
    item = {k: os.path.abspath(v) for k, v in inputs.items() if v is not None}
    datalist = os.path.join(out_dir, "datalist.json")
    write_text_atomic(datalist, json.dumps({"training": [], "validation": [], "test": [item]}, indent=2))
    overrides = {
        "bundle_root": str(bundle),
        "datalist": datalist,
        "infer_section": "test",
        "infer_dir": os.path.abspath(out_dir),
        "checkpoint": str(ckpt),
        "fixed_modality": fixed_modality,
        "moving_modality": moving_modality,
        "mc_uncertainty": bool(mc_uncertainty),
        "refine_steps": refine_steps,
    }
    if device is not None:
        overrides["device"] = device
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=False,
        workflow_type="infer",
        **overrides,
    )
    workflow.initialize()
    try:  # MONAI raises KeyError for a missing required property, returns the optional ones with a wrong id
        wrong = workflow.check_properties()
    except KeyError as e:
        wrong = [str(e)]
    if wrong:
        raise RuntimeError(f"{configs / 'inference.json'} fails MONAI's inference workflow property check: {wrong}.")
    workflow.run()
    workflow.finalize()
    failures = getattr(workflow.evaluator.state, "failures", None) or []
    if failures:
        raise ValueError(f"Registration failed ({failures[0]['stage']}): {failures[0]['reason']}")
    writers = [h for h in workflow.parser.get_parsed_content("handlers") if getattr(h, "written", None)]
    if not writers:
        raise RuntimeError(f"The inference workflow wrote no result into {out_dir}.")
    return writers[-1].written[-1]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 success, 2 bad arguments or files)."""
    parser = argparse.ArgumentParser(
        prog="mtreg-register",
        description="Register a moving image (default CT) to a fixed image (default MR) with a trained mtreg_monai "
        "bundle; writes the warped moving image, the displacement field (ITK convention, mm) and, when given, the "
        "warped moving label, on the fixed image's grid.",
    )
    parser.add_argument("--fixed", required=True, help="fixed image (NIfTI)")
    parser.add_argument("--moving", required=True, help="moving image (NIfTI)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--bundle",
        default=None,
        help=f"bundle folder (default: {default_bundle_dir()}: the source checkout's bundle/ when run from one, "
        "else the copy inside the installed package, which has configs but no weights). Its configs are code (MONAI "
        "evaluates their $ expressions): use only a bundle from a trusted source.",
    )
    parser.add_argument("--checkpoint", default=None, help="weights (default: <bundle>/models/model.pt)")
    parser.add_argument("--fixed-label", default=None)
    parser.add_argument("--moving-label", default=None)
    parser.add_argument("--fixed-modality", default="mr", choices=["mr", "ct", "unknown"])
    parser.add_argument("--moving-modality", default="ct", choices=["mr", "ct", "unknown"])
    parser.add_argument("--mc-uncertainty", action="store_true", help="also write MC dropout uncertainty maps")
    parser.add_argument(
        "--refine-steps",
        "--refine_steps",
        type=int,
        default=0,
        help="refine the network's displacement by N steps of MIND-SSC + smoothness instance optimisation "
        "(default 0: the network alone; 100 is the documented setting, about 10 s per pair at 64x64x48 on 2 CPU cores)",
    )
    parser.add_argument("--device", default=None, help="e.g. cpu or cuda:0 (default: CUDA when available)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        result = register_pair(
            args.fixed,
            args.moving,
            args.out,
            bundle_dir=args.bundle,
            fixed_label=args.fixed_label,
            moving_label=args.moving_label,
            checkpoint=args.checkpoint,
            fixed_modality=args.fixed_modality,
            moving_modality=args.moving_modality,
            mc_uncertainty=args.mc_uncertainty,
            device=args.device,
            refine_steps=args.refine_steps,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"mtreg-register: {e}", file=sys.stderr)
        return 2
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
