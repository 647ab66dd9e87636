"""``mtreg-archive``: zip the bundle in the model-zoo layout, optionally with trained weights."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from mtreg_monai.apps.register import default_bundle_dir
from mtreg_monai.utils import atomic_write

__all__ = ["DEFAULT_NAME", "bundle_files", "main", "make_bundle_archive"]

#: the bundle's folder name inside the archive (model-zoo style: lower case, underscores).
DEFAULT_NAME = "mtreg_ctmr_registration"

# what a deployment needs, relative to the bundle folder: configs and docs (recursively), the license and the list
# of weight files; weights come from models/ or --checkpoint, run outputs (outputs/, eval/) are never shipped
_TOP_FILES = ("LICENSE", "large_files.yml")
_TOP_DIRS = ("configs", "docs")
_MODEL_FILES = ("model.pt", "model.ts")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same inputs give the same archive bytes


def bundle_files(bundle_dir: str | os.PathLike) -> dict[str, Path]:
    """
    The shipped files of a bundle folder, without weights: ``configs/`` and ``docs/`` (recursively, hidden files and
    ``__pycache__`` skipped), ``LICENSE`` and ``large_files.yml``.

    Args:
        bundle_dir: the bundle folder (holding ``configs/metadata.json``).

    Returns:
        ``{path inside the bundle (POSIX): file}``, sorted by path.

    Raises:
        FileNotFoundError: when ``bundle_dir/configs/metadata.json`` or ``inference.json`` does not exist.
    """
    bundle = Path(bundle_dir)
    for required in ("metadata.json", "inference.json"):
        if not (bundle / "configs" / required).is_file():
            raise FileNotFoundError(
                f"bundle_dir {str(bundle)!r} is not a bundle: {bundle / 'configs' / required} is missing."
            )
    files = {name: bundle / name for name in _TOP_FILES if (bundle / name).is_file()}
    for top in _TOP_DIRS:
        for path in (bundle / top).rglob("*"):
            rel = path.relative_to(bundle)
            if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                files[rel.as_posix()] = path
    return dict(sorted(files.items()))


def _check_checkpoint(path: Path) -> None:
    """Refuse a checkpoint that the bundle's inference could not use, before it is shipped."""
    from mtreg_monai.handlers.checkpoint import load_checkpoint, non_finite_entries

    checkpoint = load_checkpoint(path, map_location="cpu")  # weights_only=True; names the file on error
    if "model" not in checkpoint:
        raise ValueError(
            f"checkpoint {str(path)!r} has no 'model' entry (keys: {sorted(checkpoint)}); expected a checkpoint "
            "written by the bundle's training (models/model.pt), which the inference config loads as 'model'."
        )
    bad = non_finite_entries({"model": checkpoint["model"]})
    if bad:
        raise ValueError(f"checkpoint {str(path)!r} holds non-finite weights ({', '.join(bad)}); refusing to ship it.")


def make_bundle_archive(
    out: str | os.PathLike | None = None,
    bundle_dir: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    name: str = DEFAULT_NAME,
    include_model: bool = True,
) -> str:
    """
    Zip a bundle in the model-zoo layout: ``<name>/configs/...``, ``<name>/docs/...``, ``<name>/LICENSE``,
    ``<name>/large_files.yml`` and, when available, ``<name>/models/model.pt`` (and ``model.ts``).

    The archive unpacks into a folder that runs on its own (``--bundle_root <folder>``; the configs need the
    ``mtreg_monai`` package installed) and is what ``monai.bundle.download(name, url=...)`` expects. Entries are
    sorted with fixed times, so the same inputs give the same bytes; the zip is written atomically.

    Args:
        out: the ``.zip`` to write; default ``dist/<name>_v<version>.zip`` (``version`` from the bundle's
            ``metadata.json``, MONAI's naming of bundle archives), relative to the working folder.
        bundle_dir: the bundle folder; default :func:`~mtreg_monai.apps.default_bundle_dir`.
        checkpoint: weights to ship as ``models/model.pt`` (a training checkpoint with a ``model`` entry; checked by
            loading it with ``weights_only=True`` and refused when its weights are not finite). Default: the
            bundle's own ``models/model.pt`` and ``models/model.ts`` when they exist.
        name: the folder name inside the archive (letters, digits, ``_``, ``-``, ``.``).
        include_model: ship weights at all; ``False`` gives the configs-only bundle.

    Returns:
        the path of the archive.

    Raises:
        FileNotFoundError: for a missing bundle folder or checkpoint.
        ValueError: for a bad ``name`` or ``out``, or an unusable checkpoint.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"name must be a plain folder name (letters, digits, _ - .), got {name!r}.")
    if checkpoint is not None and not include_model:
        raise ValueError("checkpoint was given with include_model=False; expected one or the other.")
    bundle = Path(bundle_dir) if bundle_dir is not None else default_bundle_dir()
    files = bundle_files(bundle)
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {str(ckpt)!r} does not exist.")
        _check_checkpoint(ckpt)
        files["models/model.pt"] = ckpt
    elif include_model:
        for model in _MODEL_FILES:
            if (bundle / "models" / model).is_file():
                files[f"models/{model}"] = bundle / "models" / model
    if out is None:
        version = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8")).get("version", "0")
        out = Path("dist") / f"{name}_v{version}.zip"
    out = Path(out)
    if out.suffix != ".zip":
        raise ValueError(f"out must be a .zip file, got {str(out)!r}.")

    def write(f: IO[Any]) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for rel, path in sorted(files.items()):
                info = zipfile.ZipInfo(f"{name}/{rel}", date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with open(path, "rb") as src, archive.open(info, "w") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)

    atomic_write(out, write, binary=True)
    return str(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 success, 2 bad arguments or files)."""
    parser = argparse.ArgumentParser(
        prog="mtreg-archive",
        description="Zip the mtreg_monai bundle in the model-zoo layout (<name>/configs, docs, LICENSE, "
        "large_files.yml, models/model.pt when available): unpack it anywhere and run it with --bundle_root.",
    )
    parser.add_argument("--out", default=None, help="the .zip to write (default: dist/<name>_v<version>.zip)")
    parser.add_argument("--bundle", default=None, help=f"bundle folder (default: {default_bundle_dir()})")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="weights to ship as models/model.pt (default: <bundle>/models/model.pt if any)",
    )
    parser.add_argument(
        "--name", default=DEFAULT_NAME, help=f"folder name inside the archive (default: {DEFAULT_NAME})"
    )
    parser.add_argument("--no-model", action="store_true", help="ship the configs and docs only, no weights")
    args = parser.parse_args(argv)
    try:
        path = make_bundle_archive(
            out=args.out,
            bundle_dir=args.bundle,
            checkpoint=args.checkpoint,
            name=args.name,
            include_model=not args.no_model,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"mtreg-archive: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
