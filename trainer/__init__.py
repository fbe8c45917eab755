"""Fit and evaluate agr-batch's multi-head classifiers on FairFace."""

from __future__ import annotations
