"""Setuptools shim: the metadata lives in setup.cfg; here only the mapping that puts the bundle into the package.

The MONAI bundle stays at the top of the source tree (``bundle/``, the model-zoo layout that ``python -m
monai.bundle run ... --config_file bundle/configs/train.json`` uses from a checkout). A built wheel (and an
sdist) carries its shipped files as package data of ``mtreg_monai.bundle``, so an installed package finds its
bundle at ``<site-packages>/mtreg_monai/bundle`` (:func:`mtreg_monai.apps.default_bundle_dir`). Trained weights
(``bundle/models``) and run outputs (``bundle/outputs``) are not shipped.
"""

from setuptools import find_packages, setup

# the shipped files of bundle/, as `mtreg-archive` ships them (tests/test_packaging.py compares the two):
# LICENSE, large_files.yml, configs/ and docs/; models/ (weights), outputs/ and eval/ (runs) stay out
BUNDLE_DATA = {
    "mtreg_monai.bundle": ["LICENSE", "large_files.yml"],
    "mtreg_monai.bundle.configs": ["**/*"],
    "mtreg_monai.bundle.docs": ["**/*"],
}

setup(
    packages=find_packages(include=["mtreg_monai", "mtreg_monai.*"]) + sorted(BUNDLE_DATA),
    package_dir={"mtreg_monai.bundle": "bundle"},
    package_data=BUNDLE_DATA,
)
