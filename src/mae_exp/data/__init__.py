"""Datasets. `prepared` is the on-disk format every stage reads; each source (`shapes`, `stl10`, `folder`)
writes it; `sources.prepare` picks the source named by data.source. Imports run one way:
prepared <- shapes, stl10, folder <- sources. This file imports nothing, so that a stage reading the
prepared format depends on prepared.py alone (dvc.yaml lists exactly what each stage imports)."""
