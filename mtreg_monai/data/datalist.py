"""Reader of the registration datalist JSON shared by the phantom generator, the bundle and users.

Format::

    {
        "training":   [{"fixed_image": "imagesTr/p1_mr.nii.gz", "moving_image": "imagesTr/p1_ct.nii.gz",
                        "fixed_label": "labelsTr/p1_mr.nii.gz", "moving_label": "labelsTr/p1_ct.nii.gz"}, ...],
        "validation": [...],
        "test":       [...]
    }

Labels are optional where ``require_labels=False`` (inference). Paths are relative to the JSON's folder (or to
``base_dir``); absolute paths are allowed unless ``base_dir`` confines them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mtreg_monai.transforms.utils import IMAGE_KEYS, LABEL_KEYS

__all__ = ["DATALIST_SECTIONS", "load_registration_datalist", "read_json_file"]

DATALIST_SECTIONS: tuple[str, str, str] = ("training", "validation", "test")
"""The conventional sections; any other top-level list can be read too."""


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def read_json_file(path: str | os.PathLike, kind: str = "JSON") -> tuple[Any, Path]:
    """
    Parse a JSON file, with errors that name it.

    Args:
        path: the file.
        kind: what the file is, for the messages (``"Datalist"``, ``"Dataset JSON"``).

    Returns:
        ``(content, path)``, the path with ``~`` expanded.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not valid UTF-8 JSON.
    """
    json_path = Path(path).expanduser()
    if not json_path.is_file():
        raise FileNotFoundError(f"{kind} file not found: '{json_path}'.")
    try:
        with open(json_path, encoding="utf-8") as f:
            return json.load(f), json_path
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{kind} '{json_path}' is not valid JSON: {e}.") from e


def load_registration_datalist(
    path: str | os.PathLike,
    section: str = "training",
    base_dir: str | os.PathLike | None = None,
    require_labels: bool = True,
    check_files: bool = False,
    allow_empty: bool = True,
) -> list[dict[str, Any]]:
    """Read and validate one section of a registration datalist.

    Each item must be a JSON object with string values for ``fixed_image`` and ``moving_image`` and, when
    ``require_labels``, ``fixed_label`` and ``moving_label``. Optional labels may be absent or ``null``
    (dropped from the output, so ``allow_missing_keys`` transforms skip them) but, when given, must be strings.
    Other keys (for example an ``"id"``) are copied unchanged.

    Paths are resolved against the JSON file's folder, or against ``base_dir`` when given. With ``base_dir``,
    every path must resolve inside it (symbolic links followed): ``../`` escapes and absolute paths elsewhere
    are refused. Without ``base_dir``, absolute paths and ``..`` are accepted as written.

    Args:
        path: the datalist JSON file.
        section: top-level key to read, usually ``"training"``, ``"validation"`` or ``"test"``.
        base_dir: folder that relative paths are resolved against and that every path must stay inside;
            ``None``: resolve against the JSON's folder, no confinement.
        require_labels: the label keys are required (training, evaluation); False at inference.
        check_files: also check that every referenced file exists.
        allow_empty: accept an empty section (returning ``[]``). Training passes False: an empty ``training``
            section would otherwise surface as a sampler error (``num_samples=0``) far from its cause. Sections
            that may legitimately be empty (``mtreg-register`` writes a datalist with an empty ``training`` list
            and reads only ``test``) keep the default True.

    Returns:
        one dict per item, with absolute, normalised path strings for the image and label keys; an empty list
        for an empty section when ``allow_empty``.

    Raises:
        FileNotFoundError: ``path`` (or ``base_dir``) does not exist, or with ``check_files`` a referenced file.
        ValueError: the JSON does not parse or is not an object, the section is missing or not a list (or empty
            when not ``allow_empty``), an item is not an object, a required key is missing, a path is not a
            non-empty string or resolves outside ``base_dir``.
            Messages name the file, the section, the item index and the key.
        TypeError: ``path`` or ``section`` has the wrong type.

    Example::

        pairs = load_registration_datalist("dataset.json", "validation")
        pairs[0]["fixed_image"]  # '/data/dataset/imagesTr/p1_mr.nii.gz'
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}.")
    if not isinstance(section, str):
        raise TypeError(f"section must be a str such as 'training', got {type(section).__name__}.")
    content, json_path = read_json_file(path, "Datalist")
    if not isinstance(content, dict):
        raise ValueError(
            f"Datalist '{json_path}' must hold a JSON object with sections such as {list(DATALIST_SECTIONS)}, "
            f"got a {type(content).__name__}."
        )
    if section not in content:
        raise ValueError(
            f"Datalist '{json_path}' has no section '{section}'; sections present: {sorted(content)}."
        )
    items = content[section]
    if not isinstance(items, list):
        raise ValueError(
            f"Section '{section}' of datalist '{json_path}' must be a list of pairs, got a {type(items).__name__}."
        )
    if not items and not allow_empty:
        raise ValueError(
            f"Section '{section}' of datalist '{json_path}' is empty; expected at least one pair "
            f"(objects with keys {list(IMAGE_KEYS + (LABEL_KEYS if require_labels else ()))})."
        )

    if base_dir is not None:
        root = Path(base_dir).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"base_dir '{base_dir}' of datalist '{json_path}' is not a folder.")
    else:
        root = json_path.resolve().parent

    required = IMAGE_KEYS + (LABEL_KEYS if require_labels else ())
    optional = () if require_labels else LABEL_KEYS
    out: list[dict[str, Any]] = []
    for idx, item in enumerate(items):
        where = f"datalist '{json_path}', section '{section}', item {idx}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a JSON object with keys {list(required)}, got {type(item).__name__}.")
        entry = dict(item)
        for key in required + optional:
            if key not in item or (key in optional and item[key] is None):
                if key in required:
                    raise ValueError(f"{where} is missing key '{key}'; required keys: {list(required)}.")
                entry.pop(key, None)
                continue
            value = item[key]
            if not isinstance(value, str):
                raise ValueError(
                    f"{where}, key '{key}' must be a path string, got {type(value).__name__}: {value!r}."
                )
            if not value.strip():
                raise ValueError(f"{where}, key '{key}' is an empty path.")
            resolved = Path(os.path.normpath(root / value))
            if base_dir is not None:
                resolved = resolved.resolve()
                if not _is_within(resolved, root):
                    raise ValueError(
                        f"{where}, key '{key}': path '{value}' resolves to '{resolved}', outside base_dir '{root}'."
                    )
            if check_files and not resolved.is_file():
                raise FileNotFoundError(f"{where}, key '{key}': file not found: '{resolved}'.")
            entry[key] = str(resolved)
        out.append(entry)
    return out
