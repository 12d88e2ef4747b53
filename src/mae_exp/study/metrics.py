"""The measures the study compares over seeds: the test-set rows of the one registry (measures.py)."""

from __future__ import annotations

from ..measures import MEASURES

METRICS = {name: m for name, m in MEASURES.items() if m.study}
