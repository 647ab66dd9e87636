"""mtreg_monai: MONAI components and bundle for double-uncertainty mean-teacher multimodal registration.

Xu et al., "Double-uncertainty guided spatial and temporal consistency regularization weighting for
learning-based abdominal registration", MICCAI 2022.
"""

from __future__ import annotations

__version__ = "0.3.0"

__all__ = ["__version__"]
