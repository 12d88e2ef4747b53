"""The study's per-image predictions: packed correctness that round-trips, read from experiments' commits
through the real dvc and git (else from the saved copy), and the bootstrap over seeds and test images checked
against bootstraps and normal approximations computed here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from dvc.api import read as dvc_read
from dvc.exceptions import DvcException

from conftest import dvc, git
from mae_exp.evaluation.measures import READOUTS
from mae_exp.plumbing.files import save_predictions
from mae_exp.study import predictions as study_predictions
from mae_exp.study.predictions import (
    SAVED_PREDICTIONS,
    correct,
    load_table,
    pack,
    read_predictions,
    save_table,
    two_way_bootstrap,
    unpack,
)

PAIR = ("original", "improved")  # study.compare: the baseline, the tested recipe

# --------------------------------------------------------------------------- packing


@pytest.mark.parametrize("length", [1, 7, 8, 1000])
def test_packed_correctness_round_trips(length, tmp_path):
    rng = np.random.default_rng(length)
    vectors = [rng.random(length) < 0.5, np.zeros(length, bool), np.ones(length, bool)]
    for v in vectors:
        assert np.array_equal(unpack(pack(v), length), v)
    # through the saved CSV too: all-False packs to digits only ("00"), which must stay text, not become 0
    table = pd.DataFrame(
        [
            {"rev": f"{i}" * 7, "encoder": "original", "metric": "ft_top1", "images": length, "correct": pack(v)}
            for i, v in enumerate(vectors)
        ]
    )
    save_table(table, tmp_path / "p.csv")
    back = load_table(tmp_path / "p.csv")
    for i, v in enumerate(vectors):
        got = correct(back, f"{i}" * 7, "original", "ft_top1")
        assert got is not None and got.dtype == bool and np.array_equal(got, v)
    assert correct(back, "0" * 7, "improved", "ft_top1") is None


# --------------------------------------------------------------------------- the bootstrap


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def seeds_only(seed_values: np.ndarray, draws: int = 10_000, seed: int = 123) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(seed_values), (draws, len(seed_values)))
    return percentile_interval(seed_values[picks].mean(axis=1))


def images_only(image_values: np.ndarray, draws: int = 10_000, seed: int = 321) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = [image_values[rng.integers(0, len(image_values), len(image_values))].mean() for _ in range(draws)]
    return percentile_interval(np.array(means))


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def image_diffs(images: int, seed: int) -> np.ndarray:
    """correct_improved - correct_original on each test image: -1, 0 or +1."""
    rng = np.random.default_rng(seed)
    return (rng.random(images) < 0.55).astype(float) - (rng.random(images) < 0.5).astype(float)


def test_without_image_variance_it_is_the_bootstrap_over_seeds():
    seed_values = np.random.default_rng(1).normal(0.02, 0.01, 8)
    d = np.repeat(seed_values[:, None], 50, axis=1)  # every image of a seed gives the seed's difference
    got, want = two_way_bootstrap(d, seed=5), seeds_only(seed_values)
    assert abs(got[0] - want[0]) < 0.05 * width(want) and abs(got[1] - want[1]) < 0.05 * width(want), (got, want)


def test_without_seed_variance_it_is_the_bootstrap_over_images():
    diffs = image_diffs(1000, seed=2)
    d = np.repeat(diffs[None, :], 4, axis=0)  # every seed the same
    got = two_way_bootstrap(d, draws=4000, seed=6)
    normal = 2 * 1.96 * diffs.std(ddof=1) / np.sqrt(len(diffs))
    assert abs(width(got) / normal - 1) < 0.1, (width(got), normal)
    want = images_only(diffs, draws=4000)
    assert abs(width(got) / width(want) - 1) < 0.1 and abs(got[0] - want[0]) < 0.1 * width(want), (got, want)
    # one seed: images only, the same interval within Monte-Carlo error
    one = two_way_bootstrap(diffs[None, :], draws=4000, seed=7)
    assert abs(width(one) / normal - 1) < 0.1 and abs(one[0] - got[0]) < 0.1 * normal, (one, got)


def test_both_sources_widen_the_interval_as_their_variances_add():
    diffs = image_diffs(1000, seed=3)
    diffs -= diffs.mean()
    image_sd = diffs.std() / np.sqrt(len(diffs))
    spread = np.random.default_rng(4).normal(size=6)
    # the seeds' bootstrap sd (their population sd / sqrt(6)) set to the images'
    seed_values = 0.03 + (spread - spread.mean()) / spread.std() * image_sd * np.sqrt(6)
    both = two_way_bootstrap(seed_values[:, None] + diffs[None, :], draws=4000, seed=8)
    seed_part = two_way_bootstrap(np.repeat(seed_values[:, None], len(diffs), axis=1), draws=4000, seed=8)
    image_part = two_way_bootstrap(np.repeat(seed_values.mean() + diffs[None, :], 6, axis=0), draws=4000, seed=8)
    assert width(both) > 1.2 * width(seed_part) and width(both) > 1.2 * width(image_part), (both, seed_part, image_part)
    assert abs(width(both) / np.hypot(width(seed_part), width(image_part)) - 1) < 0.15


def test_the_bootstrap_is_reproducible_and_contains_its_statistic(monkeypatch):
    rng = np.random.default_rng(9)
    d = (rng.random((5, 300)) < 0.6).astype(float) - (rng.random((5, 300)) < 0.5).astype(float)
    d += rng.normal(0, 0.05, (5, 1))  # a seed effect
    first = two_way_bootstrap(d, draws=2000, seed=11)
    assert two_way_bootstrap(d, draws=2000, seed=11) == first
    assert two_way_bootstrap(d, draws=2000, seed=12) != first
    low, high = first
    assert low < d.mean() < high
    assert width(two_way_bootstrap(d, level=0.9, draws=2000, seed=11)) < width(first)
    # in chunks that do not divide the draws, every draw is still made: the same interval within MC error
    monkeypatch.setattr(study_predictions, "CHUNK_BYTES", 7 * 8 * 300)
    chunked = two_way_bootstrap(d, draws=2000, seed=11)
    assert abs(chunked[0] - low) < 0.1 * width(first) and abs(chunked[1] - high) < 0.1 * width(first)


def test_the_bootstrap_needs_a_seed_and_an_image():
    with pytest.raises(ValueError, match="at least 1 seed"):
        two_way_bootstrap(np.zeros((0, 10)))
    with pytest.raises(ValueError, match="seeds x images"):
        two_way_bootstrap(np.zeros(10))


# --------------------------------------------------------------------------- read from experiments' commits

LABELS = np.random.default_rng(0).integers(0, 10, 37)  # 37 test images: not a whole number of bytes


def predicted(seed: int) -> np.ndarray:
    """Labels, a third of them replaced by another class at random."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(LABELS)) < 1 / 3
    return np.where(wrong, (LABELS + rng.integers(1, 10, len(LABELS))) % 10, LABELS)


def write_predictions(repo, encoders: dict[str, int]) -> dict[tuple[str, str], np.ndarray]:
    """Each encoder's predictions files (seeded by `encoders[encoder]`), DVC-tracked; {(encoder, metric): correct}."""
    expected = {}
    for encoder, seed in encoders.items():
        probe = {r: predicted(seed * 100 + i) for i, r in enumerate(READOUTS)}
        save_predictions(repo / f"predictions/linear_probe_{encoder}.npz", probe, LABELS)
        save_predictions(repo / f"predictions/finetune_{encoder}.npz", {"finetune": predicted(seed * 100 + 99)}, LABELS)
        expected.update({(encoder, f"{r}_top1"): p == LABELS for r, p in probe.items()})
        expected[encoder, "ft_top1"] = predicted(seed * 100 + 99) == LABELS
    files = [f"predictions/{stage}_{e}.npz" for e in encoders for stage in ("linear_probe", "finetune")]
    dvc("add", "-q", *files, cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", f"predictions of {', '.join(encoders)}", cwd=repo)
    return expected


def run_row(seed: int, ablation: str, rev: str) -> dict:
    return {"seed": seed, "ablation": ablation, "budget": 32, "name": f"s{seed}-{ablation}", "rev": rev}


def test_predictions_are_read_from_each_experiments_commit_else_from_the_saved_copy(tmp_path):
    repo = tmp_path / "exps"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    dvc("init", "-q", cwd=repo)
    full = write_predictions(repo, {"random": 1, "original": 2, "improved": 3})
    full_rev = git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    # an arm that changes the original (originals): only its original is read, here another one
    changed = write_predictions(repo, {"original": 4})
    changed_rev = git("rev-parse", "HEAD", cwd=repo).stdout.strip()
    runs = pd.DataFrame([run_row(1, "all", full_rev), run_row(1, "original_flops_matched", changed_rev)])

    table, notes = read_predictions(runs, {"original_flops_matched"}, repo, pair=PAIR)
    assert notes == []
    assert set(zip(table["rev"], table["encoder"])) == {
        (full_rev, "random"),
        (full_rev, "original"),
        (full_rev, "improved"),
        (changed_rev, "original"),
    }
    assert set(table["metric"]) == {f"{r}_top1" for r in READOUTS} | {"ft_top1"}
    assert (table["images"] == len(LABELS)).all() and len(table) == 4 * (len(READOUTS) + 1)
    for (encoder, metric), want in full.items():
        assert np.array_equal(correct(table, full_rev, encoder, metric), want), (encoder, metric)
    for (encoder, metric), want in changed.items():
        assert np.array_equal(correct(table, changed_rev, encoder, metric), want), (encoder, metric)
    assert not np.array_equal(full["original", "ft_top1"], changed["original", "ft_top1"])  # told apart by rev
    assert correct(table, changed_rev, "random", "ft_top1") is None

    # committed beside the ledger, the table serves a fresh clone, which has neither the DVC cache nor the files
    save_table(table, repo / SAVED_PREDICTIONS)
    git("add", str(SAVED_PREDICTIONS), cwd=repo)
    git("commit", "-q", "-m", "the saved predictions", cwd=repo)
    clone = tmp_path / "clone"
    git("clone", "-q", str(repo), str(clone), cwd=tmp_path)
    with pytest.raises(DvcException):  # so what follows comes from the saved copy
        dvc_read("predictions/finetune_original.npz", repo=str(clone), rev=full_rev, mode="rb")
    unknown = "f" * 40  # an experiment neither DVC nor the saved copy knows
    more = pd.concat([runs, pd.DataFrame([run_row(2, "all", unknown)])], ignore_index=True)
    from_clone, notes = read_predictions(more, {"original_flops_matched"}, clone, pair=PAIR)
    order = ["rev", "encoder", "metric"]
    pd.testing.assert_frame_equal(
        from_clone.sort_values(order, ignore_index=True), table.sort_values(order, ignore_index=True)
    )
    assert len(notes) == 1 and notes[0].startswith(
        "6 prediction file(s) could not be read from their experiment or the saved copy: "
        "s2-all: predictions/linear_probe_random.npz, s2-all: predictions/finetune_random.npz, "
    ), notes

    # a saved copy that lacks one file of an experiment: that file is noted, the rest still read
    partial = table[~((table["rev"] == full_rev) & (table["encoder"] == "improved") & (table["metric"] == "ft_top1"))]
    got, notes = read_predictions(runs, {"original_flops_matched"}, clone, saved=partial, pair=PAIR)
    assert len(got) == len(table) - 1 and correct(got, full_rev, "improved", "ft_top1") is None
    assert notes == [
        "1 prediction file(s) could not be read from their experiment or the saved copy: "
        "s1-all: predictions/finetune_improved.npz"
    ]
