"""agr-batch: demographic statistics (FairFace age, gender, race) from videos and image folders."""

from __future__ import annotations

__version__ = "0.1.0"
