"""Datasets. `prepared` is the on-disk format every stage reads; each source (`shapes`, `stl10`, `cifar10`,
`folder`) writes it; `sources.prepare` picks the source named by data.source. Imports run one way:
prepared <- shapes, stl10 (<- cifar10, which reuses its download), folder <- sources. This file imports
nothing, so that a stage reading the prepared format depends on prepared.py alone (dvc.yaml lists exactly
what each stage imports). `photos10` is a command of its own (rebuilds the development photos from their
manifest), run by no stage."""
