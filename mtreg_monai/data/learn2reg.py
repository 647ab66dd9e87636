"""Converter from a Learn2Reg dataset JSON (AbdomenMRCT layout) to the registration datalist of this package.

A Learn2Reg task folder holds ``<Task>_dataset.json`` and ``imagesTr/``, ``labelsTr/``, ``masksTr/`` with file names
``<Task>_<case>_<modality>.nii.gz`` (``AbdomenMRCT_0001_0000.nii.gz``: case 0001, modality 0 = MR). The JSON keys
read here (others are ignored): ``modality`` (``{"0": "MR", "1": "CT"}``), ``registration_direction``
(``{"fixed": 0, "moving": 1}``), ``training`` (``[{"image": "./imagesTr/...", "label": "./labelsTr/...",
"mask": ...}, ...]``, or grouped by modality ``{"0": [...], "1": [...]}``, or path strings),
``training_paired_images``, ``registration_val`` and ``registration_test`` (``[{"fixed": ..., "moving": ...}]``);
all but one of ``training`` / ``training_paired_images`` may be absent.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mtreg_monai.data.datalist import DATALIST_SECTIONS, read_json_file
from mtreg_monai.utils import write_text_atomic

__all__ = ["LEARN2REG_PAIR_SECTIONS", "convert_learn2reg_datalist", "is_learn2reg_datalist", "resolve_datalist"]

logger = logging.getLogger(__name__)

LEARN2REG_PAIR_SECTIONS: dict[str, str] = {
    "training_paired_images": "training",
    "registration_val": "validation",
    "registration_test": "test",
}
"""Learn2Reg key of a list of ``{"fixed", "moving"}`` pairs -> section of our datalist it becomes."""

_FILE_NAME = re.compile(r"^(?P<case>.+)_(?P<modality>\d{4})(?P<ext>\.nii\.gz|\.nii|\.mha|\.nrrd)$")
_RESOLVED_NAME = "datalist_learn2reg.json"


def _read_json(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the dataset JSON must be a str or os.PathLike path, got {type(path).__name__}.")
    content, json_path = read_json_file(path, "Dataset JSON")
    if not isinstance(content, dict):
        raise ValueError(f"Dataset JSON '{json_path}' must hold a JSON object, got a {type(content).__name__}.")
    return content, json_path


def _is_our_datalist(content: Mapping[str, Any]) -> bool:
    if any(key in content for key in LEARN2REG_PAIR_SECTIONS):
        return False
    sections = [content[s] for s in DATALIST_SECTIONS if s in content]
    if not sections or not all(isinstance(s, list) for s in sections):
        return False
    return all(isinstance(item, dict) and "fixed_image" in item for s in sections for item in s)


def is_learn2reg_datalist(path_or_dict: str | os.PathLike | Mapping[str, Any]) -> bool:
    """Whether a JSON file (or its parsed content) is a Learn2Reg dataset JSON rather than our datalist.

    True when it has one of the keys ``training_paired_images``, ``registration_val``, ``registration_test``,
    or a ``training`` entry in Learn2Reg form (a per-modality dict, or a list of ``{"image": ...}`` objects or
    path strings without ``fixed_image``).

    Args:
        path_or_dict: path of the JSON file, or its parsed content.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a JSON object.
        TypeError: ``path_or_dict`` is neither a path nor a mapping.
    """
    if isinstance(path_or_dict, Mapping):
        content = path_or_dict
    elif isinstance(path_or_dict, (str, os.PathLike)):
        content, _ = _read_json(path_or_dict)
    else:
        raise TypeError(f"path_or_dict must be a path or a dict, got {type(path_or_dict).__name__}.")
    if any(key in content for key in LEARN2REG_PAIR_SECTIONS):
        return True
    training = content.get("training")
    if isinstance(training, dict):
        return True
    if isinstance(training, list) and training:
        return all(
            isinstance(item, str) or (isinstance(item, dict) and "image" in item and "fixed_image" not in item)
            for item in training
        )
    return False


class _Converter:
    """One conversion: the parsed JSON, its folder, and the checks that name the file in their messages."""

    def __init__(self, content: dict[str, Any], json_path: Path, check_files: bool) -> None:
        self.content = content
        self.json_path = json_path
        self.root = os.path.abspath(json_path.parent)
        self.check_files = check_files

    def path(self, value: Any, where: str) -> str:
        """Absolute, normalised path of a JSON path entry (relative to the JSON's folder, inside it)."""
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where} must be a non-empty path string, got {value!r}.")
        resolved = os.path.normpath(os.path.join(self.root, value))
        if os.path.commonpath([resolved, self.root]) != self.root:
            raise ValueError(
                f"{where}: path '{value}' resolves to '{resolved}', outside the dataset folder '{self.root}'."
            )
        return resolved

    @property
    def modality_names(self) -> dict[int, str]:
        """The JSON's ``modality`` mapping with int keys (``"0"`` and ``"0000"`` both give 0)."""
        names = self.content.get("modality")
        names = names if isinstance(names, dict) else {}
        return {int(k): str(v) for k, v in names.items() if str(k).strip().isdigit()}

    def modality(self, value: Any, role: str) -> int:
        """Modality index (the 4-digit file name suffix as an int) from an int, a digit string or a name."""
        known = self.modality_names
        index = None
        if isinstance(value, int) and not isinstance(value, bool):
            index = value
        elif isinstance(value, str) and value.strip().isdigit():
            index = int(value)
        elif isinstance(value, str) and value.strip():
            wanted = value.strip().lower()
            hits = [k for k, v in known.items() if wanted in (v.strip().lower(), (v.split() or [""])[0].lower())]
            if len(hits) == 1:
                index = hits[0]
        if index is None or index < 0 or (known and index not in known):
            raise ValueError(
                f"{role} {value!r} is not a modality of dataset JSON '{self.json_path}' (key 'modality': "
                f"{self.content.get('modality')}); "
                f"expected one of its indices {sorted(known) or '0, 1, ...'} or a name among {sorted(known.values())}."
            )
        return index

    def file_modality(self, path: str) -> int | None:
        match = _FILE_NAME.match(os.path.basename(path))
        return int(match.group("modality")) if match else None

    def case_id(self, path: str) -> str:
        match = _FILE_NAME.match(os.path.basename(path))
        return match.group("case") if match else os.path.basename(path).split(".")[0]

    def image_table(self) -> dict[str, dict[str, Any]]:
        """``training`` entries: absolute image path -> ``{"modality"[, "label"]}`` (modality None if unknown)."""
        training = self.content.get("training", [])
        if isinstance(training, dict):
            groups = [(str(k), v, f"key 'training', modality '{k}'") for k, v in training.items()]
        else:
            groups = [(None, training, "key 'training'")]
        table: dict[str, dict[str, Any]] = {}
        for modality, entries, where in groups:
            where = f"dataset JSON '{self.json_path}', {where}"
            if not isinstance(entries, list):
                raise ValueError(f"{where} must be a list of {{'image': ...}} objects, got {type(entries).__name__}.")
            if modality is not None and not modality.isdigit():
                raise ValueError(f"{where}: the modality keys of 'training' must be digit strings such as '0'.")
            for idx, entry in enumerate(entries):
                at = f"{where}, item {idx}"
                entry = {"image": entry} if isinstance(entry, str) else entry
                if not isinstance(entry, dict) or "image" not in entry:
                    raise ValueError(f"{at} must be an object with key 'image' (or a path string), got {entry!r}.")
                image = self.path(entry["image"], f"{at}, key 'image'")
                table[image] = {"modality": int(modality) if modality is not None else self.file_modality(image)}
                if entry.get("label") is not None:
                    table[image]["label"] = self.path(entry["label"], f"{at}, key 'label'")
        return table

    def pairs(self, key: str, fixed_idx: int, moving_idx: int) -> list[tuple[str, str]]:
        """The ``{"fixed", "moving"}`` list under ``key``, oriented as (fixed modality, moving modality)."""
        entries = self.content.get(key, [])
        where = f"dataset JSON '{self.json_path}', key '{key}'"
        if not isinstance(entries, list):
            raise ValueError(f"{where} must be a list of {{'fixed', 'moving'}} objects, got {type(entries).__name__}.")
        out = []
        for idx, entry in enumerate(entries):
            at = f"{where}, item {idx}"
            if not isinstance(entry, dict):
                raise ValueError(f"{at} must be an object with keys 'fixed' and 'moving', got {entry!r}.")
            for role in ("fixed", "moving"):
                if role not in entry:
                    raise ValueError(f"{at} is missing key '{role}'; it has {sorted(entry)}.")
            fixed, moving = (self.path(entry[r], f"{at}, key '{r}'") for r in ("fixed", "moving"))
            mods = (self.file_modality(fixed), self.file_modality(moving))
            if mods == (moving_idx, fixed_idx):
                fixed, moving = moving, fixed
            elif None not in mods and mods != (fixed_idx, moving_idx):
                raise ValueError(
                    f"{at} pairs modalities {mods[0]} -> {mods[1]} (file name suffixes), but the conversion asks for "
                    f"fixed modality {fixed_idx} and moving modality {moving_idx}."
                )
            out.append((fixed, moving))
        return out

    def grouped_pairs(self, table: Mapping[str, Mapping[str, Any]], fixed_idx: int, moving_idx: int) -> list:
        """Intra-case pairs from the ``training`` images: one per case that has both modalities."""
        cases: dict[str, dict[int, str]] = {}
        for image, info in table.items():
            if info.get("modality") is not None:
                cases.setdefault(self.case_id(image), {})[info["modality"]] = image
        return [
            (mods[fixed_idx], mods[moving_idx])
            for case, mods in sorted(cases.items())
            if fixed_idx in mods and moving_idx in mods
        ]

    def label(self, image: str, table: Mapping[str, Mapping[str, Any]], where: str) -> str | None:
        """The image's label: from ``training`` when listed there, else the ``labels*`` sibling when it exists."""
        given = table.get(image, {}).get("label")
        if given is not None:
            if self.check_files and not os.path.isfile(given):
                raise FileNotFoundError(f"{where}: label file listed in 'training' not found: '{given}'.")
            return given
        parts = list(Path(os.path.relpath(image, self.root)).parts)
        for i in range(len(parts) - 2, -1, -1):
            if parts[i].startswith("images"):
                parts[i] = "labels" + parts[i][len("images") :]
                candidate = os.path.join(self.root, *parts)
                return candidate if os.path.isfile(candidate) else None
        return None

    def items(self, section: str, pairs: list[tuple[str, str]], table: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Datalist items of one section; test pairs with missing images are dropped, others raise."""
        items, missing = [], 0
        for idx, (fixed, moving) in enumerate(pairs):
            where = f"dataset JSON '{self.json_path}', {section} pair {idx}"
            absent = [p for p in (fixed, moving) if self.check_files and not os.path.isfile(p)]
            if absent and section == "test":
                missing += 1
                continue
            if absent:
                raise FileNotFoundError(f"{where}: image file not found: '{absent[0]}'.")
            case_f, case_m = self.case_id(fixed), self.case_id(moving)
            pair_id = case_f if case_f == case_m else f"{case_f}__{case_m}"
            item = {"fixed_image": fixed, "moving_image": moving, "id": pair_id}
            for role, image in (("fixed", fixed), ("moving", moving)):
                label = self.label(image, table, where)
                if label is not None:
                    item[f"{role}_label"] = label
            items.append(item)
        if missing:
            logger.warning("dropped %d of %d test pairs of %s: images missing", missing, len(pairs), self.json_path)
        unlabelled = sum("fixed_label" not in i or "moving_label" not in i for i in items)
        if unlabelled and section != "test":
            logger.warning(
                "%d of %d %s pairs of %s have no labels; the training bundle needs them", unlabelled, len(items),
                section, self.json_path,
            )  # fmt: skip
        return items


def convert_learn2reg_datalist(
    dataset_json: str | os.PathLike,
    out_path: str | os.PathLike | None = None,
    fixed_modality: int | str | None = None,
    moving_modality: int | str | None = None,
    num_val: int | None = None,
    keep_eval_in_training: bool = False,
    check_files: bool = True,
) -> dict[str, Any]:
    """Convert a Learn2Reg dataset JSON (for example ``AbdomenMRCT_dataset.json``) into our registration datalist.

    Sections:

    - ``training``: the ``training_paired_images`` pairs when the key is present, else one intra-case pair per
      case of ``training`` whose images include both modalities (cases with one modality only, such as the unpaired
      scans of AbdomenMRCT, are left out). Pairs that share an image with a validation or test pair are removed
      unless ``keep_eval_in_training``.
    - ``validation``: the ``registration_val`` pairs, then the last ``num_val`` training pairs when given.
    - ``test``: the ``registration_test`` pairs. With ``check_files``, test pairs whose images are missing
      (Learn2Reg often ships the test images separately) are dropped with a warning.

    Each item has ``fixed_image``, ``moving_image``, ``id`` (the case, e.g. ``"AbdomenMRCT_0001"``, or
    ``"<fixed>__<moving>"`` for pairs across cases) and, when found, ``fixed_label`` and ``moving_label``: the label
    listed for that image in ``training``, else the file of the same name in the ``labels*`` folder beside the image
    folder (``imagesTr`` -> ``labelsTr``, ``imagesTs`` -> ``labelsTs``) when it exists; otherwise the key is absent.
    Every pair is oriented fixed = ``fixed_modality``, moving = ``moving_modality`` by the file name suffixes
    (``_0000`` = modality 0), swapping a listed pair that runs the other way.

    All paths in the output are absolute and normalised (symbolic links kept), so the datalist can be written
    anywhere; the Learn2Reg JSON's own paths (``./imagesTr/...``) are resolved against its folder and must stay
    inside it.

    Args:
        dataset_json: path of the Learn2Reg dataset JSON.
        out_path: when given, the datalist is also written there as JSON (atomically: temporary file + rename;
            parent folders created).
        fixed_modality: the fixed image's modality: an index (``0``, ``"0"``, ``"0000"``) or a name of the JSON's
            ``modality`` mapping (``"MR"``, case-insensitive). ``None``: ``registration_direction["fixed"]`` of the
            JSON, else 0 (AbdomenMRCT: 0 = MR).
        moving_modality: the moving image's modality, likewise; ``None``: ``registration_direction["moving"]``,
            else 1 (AbdomenMRCT: 1 = CT).
        num_val: number of training pairs (the last ones) moved to ``validation`` after the ``registration_val``
            pairs; ``None`` or 0: none.
        keep_eval_in_training: keep training pairs that share an image with a validation or test pair.
        check_files: check that the images (and labels listed in ``training``) exist.

    Returns:
        ``{"name", "description", "source", "modality": {"fixed", "moving"}, "labels", "training", "validation",
        "test"}``; the last three are lists of pair dicts as read by
        :func:`~mtreg_monai.data.load_registration_datalist`.

    Raises:
        FileNotFoundError: the JSON, or with ``check_files`` a training/validation image or a listed label, is
            missing.
        ValueError: the JSON does not parse or is not an object; it has neither ``training_paired_images`` nor
            ``training``; a section has the wrong type; a pair lacks ``fixed`` or ``moving``; a path is empty or
            leaves the dataset folder; a modality is unknown, the same for fixed and moving, or contradicts a pair's
            file names; ``num_val`` is not an int in ``[0, number of training pairs)``. Messages name the file,
            the key and the item index.
        TypeError: ``dataset_json`` is not a path.

    Example::

        datalist = convert_learn2reg_datalist("AbdomenMRCT/AbdomenMRCT_dataset.json", "outputs/datalist.json")
        datalist["validation"][0]["fixed_image"]  # '/data/AbdomenMRCT/imagesTr/AbdomenMRCT_0006_0000.nii.gz'
    """
    content, json_path = _read_json(dataset_json)
    conv = _Converter(content, json_path, check_files)
    if "training_paired_images" not in content and "training" not in content:
        raise ValueError(
            f"Dataset JSON '{json_path}' has neither 'training_paired_images' nor 'training'; keys present: "
            f"{sorted(content)}. Is it a Learn2Reg dataset JSON?"
        )
    direction = content.get("registration_direction")
    direction = direction if isinstance(direction, dict) else {}
    fixed_value = fixed_modality if fixed_modality is not None else direction.get("fixed", 0)
    moving_value = moving_modality if moving_modality is not None else direction.get("moving", 1)
    fixed_idx = conv.modality(fixed_value, "fixed_modality")
    moving_idx = conv.modality(moving_value, "moving_modality")
    if fixed_idx == moving_idx:
        raise ValueError(
            f"fixed_modality and moving_modality must differ, got modality {fixed_idx} for both "
            f"(dataset JSON '{json_path}')."
        )
    if num_val is not None and (not isinstance(num_val, int) or isinstance(num_val, bool) or num_val < 0):
        raise ValueError(f"num_val must be None or an int >= 0, got {num_val!r}.")

    table = conv.image_table()
    if "training_paired_images" in content:
        training = conv.pairs("training_paired_images", fixed_idx, moving_idx)
    else:
        training = conv.grouped_pairs(table, fixed_idx, moving_idx)
    validation = conv.pairs("registration_val", fixed_idx, moving_idx)
    test = conv.pairs("registration_test", fixed_idx, moving_idx)
    if not keep_eval_in_training:
        held_out = {image for pair in validation + test for image in pair}
        training = [pair for pair in training if not held_out.intersection(pair)]
    if num_val:
        if num_val >= len(training):
            raise ValueError(
                f"num_val={num_val} must leave at least one training pair; dataset JSON '{json_path}' gives "
                f"{len(training)} training pairs after removing the validation and test pairs."
            )
        training, validation = training[:-num_val], validation + training[-num_val:]

    sections = {
        section: conv.items(section, pairs, table)
        for section, pairs in (("training", training), ("validation", validation), ("test", test))
    }
    if not sections["training"]:
        logger.warning("the datalist converted from %s has no training pairs", json_path)

    names = conv.modality_names
    datalist: dict[str, Any] = {
        "name": str(content.get("name", json_path.stem)),
        "description": "converted from the Learn2Reg dataset JSON by mtreg_monai.data.convert_learn2reg_datalist",
        "source": str(os.path.abspath(json_path)),
        "modality": {
            "fixed": names.get(fixed_idx, str(fixed_idx)),
            "moving": names.get(moving_idx, str(moving_idx)),
        },
        "labels": content.get("labels", {}) if isinstance(content.get("labels", {}), dict) else {},
        **sections,
    }
    if out_path is not None:
        _write_json_atomic(datalist, out_path)
    return datalist


def _write_json_atomic(content: Mapping[str, Any], path: str | os.PathLike) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"out_path must be a str or os.PathLike, got {type(path).__name__}.")
    write_text_atomic(os.path.expanduser(os.fspath(path)), json.dumps(content, indent=2))


def resolve_datalist(path: str | os.PathLike, out_dir: str | os.PathLike, **kwargs: Any) -> str:
    """The datalist to train, evaluate or infer from: ours as given, a Learn2Reg dataset JSON converted.

    For the bundle's one config value ``datalist``: a datalist already in our format (``training`` /
    ``validation`` / ``test`` lists of objects with ``fixed_image``) is returned unchanged and nothing is written;
    a Learn2Reg dataset JSON is converted with :func:`convert_learn2reg_datalist` into
    ``out_dir/datalist_learn2reg.json`` (rewritten atomically at every call, so a changed JSON is picked up) and
    that path is returned.

    Args:
        path: our datalist or a Learn2Reg dataset JSON.
        out_dir: folder for the converted datalist (created when needed).
        kwargs: passed to :func:`convert_learn2reg_datalist` (``fixed_modality``, ``num_val``, ...).

    Returns:
        the path of a datalist in our format.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is neither format, or the conversion fails (see :func:`convert_learn2reg_datalist`).
        TypeError: ``path`` or ``out_dir`` is not a path.

    Example::

        resolve_datalist("/data/AbdomenMRCT/AbdomenMRCT_dataset.json", "outputs")  # 'outputs/datalist_learn2reg.json'
    """
    content, json_path = _read_json(path)
    if _is_our_datalist(content):
        return os.fspath(path)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a str or os.PathLike, got {type(out_dir).__name__}.")
    if not is_learn2reg_datalist(content):
        raise ValueError(
            f"Datalist '{json_path}' is neither our datalist (sections {list(DATALIST_SECTIONS)} holding objects "
            f"with 'fixed_image') nor a Learn2Reg dataset JSON (keys 'training_paired_images', 'registration_val', "
            f"'training' with 'image' entries); keys present: {sorted(content)}."
        )
    out_path = os.path.join(os.fspath(out_dir), _RESOLVED_NAME)
    convert_learn2reg_datalist(json_path, out_path, **kwargs)
    logger.info("converted the Learn2Reg dataset JSON %s into %s", json_path, out_path)
    return out_path
