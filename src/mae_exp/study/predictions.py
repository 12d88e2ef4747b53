"""Each experiment's per-image correctness on the test set, and a bootstrap over seeds and test images.

A study difference (the tested recipe - the baseline) varies with the seed and with which test images were drawn; the t
interval over seeds sees only the first. Every readout stage saves the predicted class of every test image
(plumbing.files.save_predictions: `predictions/linear_probe_<encoder>.npz`, one array per probe readout, and
`predictions/finetune_<encoder>.npz`, key "finetune"), so the report can resample both. Like the fine-tuning
curves (results.finetune_curves), they are read from each experiment's commit through dvc.api, and kept in a
committed file, since DVC's experiment refs do not travel with a clone.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..plumbing.config import RANDOM
from ..plumbing.files import atomic_write

# one row per (rev, encoder, metric): how many test images, and which were right (np.packbits of the bool
# vector, as hex): exact, about 2.5 kB a row for 10,000 images. Read it with `saved_predictions` (every column
# as text: a short hex string such as "00" or "1e5" would otherwise be read as a number)
SAVED_PREDICTIONS = Path("metrics/study_predictions.csv")
COLUMNS = ["rev", "encoder", "metric", "images", "correct"]
STAGES = ("linear_probe", "finetune")  # predictions/<stage>_<encoder>.npz


def metric_of(stage: str, key: str) -> str:
    """The study metric id (measures.py) of one array of a predictions file: `<readout>_top1` for a probe
    readout, `ft_top1` for fine-tuning (saved under the key "finetune")."""
    return "ft_top1" if stage == "finetune" else f"{key}_top1"


def pack(correct: np.ndarray) -> str:
    """A bool vector as the hex of its np.packbits (the last byte zero-padded)."""
    return np.packbits(np.asarray(correct, dtype=bool)).tobytes().hex()


def unpack(text: str, images: int) -> np.ndarray:
    """pack's inverse: the first `images` bits, as bools."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8), count=int(images))
    return bits.astype(bool)


def saved_predictions(root: str | Path = ".") -> pd.DataFrame:
    """The saved correctness table (SAVED_PREDICTIONS under `root`); empty if none yet."""
    return load_table(Path(root) / SAVED_PREDICTIONS)


def load_table(path: str | Path) -> pd.DataFrame:
    """A table save_table wrote, its text columns as text (not numbers), or an empty one if there is no file."""
    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS)
    text = {c: str for c in COLUMNS if c != "images"}
    return pd.read_csv(path, dtype={**text, "images": int}, keep_default_na=False)


def save_table(table: pd.DataFrame, path: str | Path) -> None:
    """The table as CSV, written atomically: a report stopped half-way leaves the last one whole."""
    atomic_write(path, lambda tmp: table[COLUMNS].to_csv(tmp, index=False))


def rows_of(data: bytes, stage: str, rev: str, encoder: str) -> list[dict]:
    """One predictions .npz -> a row per readout in it (correct = predicted == labels)."""
    with np.load(io.BytesIO(data)) as npz:
        labels = npz["labels"]
        predicted = {key: npz[key] for key in npz.files if key != "labels"}
    rows = []
    for key, values in predicted.items():
        if values.shape != labels.shape:
            raise ValueError(f"{key}: {values.shape} predictions for {labels.shape} labels")
        right = values == labels
        metric = metric_of(stage, key)
        rows.append({"rev": rev, "encoder": encoder, "metric": metric, "images": right.size, "correct": pack(right)})
    return rows


def wanted_encoders(ablation: str, baseline_arms: set[str], pair) -> tuple[str, ...]:
    """The encoders an experiment supplies, as finetune_curves reads them (`pair`: study.compare, the baseline
    then the tested recipe): an arm that changes the baseline supplies only its baseline; every other arm its
    random, baseline and tested encoders."""
    baseline, tested = pair
    return (baseline,) if ablation in baseline_arms else (RANDOM, baseline, tested)


def read_predictions(
    runs: pd.DataFrame,
    baseline_arms: set[str],
    root: str | Path = ".",
    saved: pd.DataFrame | None = None,
    *,
    pair,
) -> tuple[pd.DataFrame, list[str]]:
    """Every experiment's per-image correctness, one row per (rev, encoder, metric) in the SAVED_PREDICTIONS
    format, read from each experiment's commit through dvc.api, else from the `saved` table (default: the
    committed one under `root`); and notes on what neither had. `baseline_arms`: the arms that change the
    baseline (results.baseline_arms); `pair`: study.compare. Each (rev, encoder) is read, even where another
    arm of the seed holds the same random or baseline encoder, so a lookup by the experiment's rev always works."""
    import dvc.api
    from dvc.exceptions import DvcException

    saved = saved if saved is not None else saved_predictions(root)
    kept = {key: part for key, part in saved.groupby(["rev", "encoder"])}
    rows, missing, done = [], [], set()
    for r in runs.to_dict("records"):
        for encoder in wanted_encoders(r["ablation"], baseline_arms, pair):
            if (r["rev"], encoder) in done:
                continue
            done.add((r["rev"], encoder))
            for stage in STAGES:
                path = f"predictions/{stage}_{encoder}.npz"
                try:
                    data = dvc.api.read(path, repo=str(root), rev=r["rev"], mode="rb")
                    rows.extend(rows_of(data, stage, r["rev"], encoder))
                    continue
                except (DvcException, OSError, ValueError, KeyError, zipfile.BadZipFile):
                    pass
                part = kept.get((r["rev"], encoder))
                # the saved rows of this file: fine-tuning's is ft_top1, the probe's every other metric
                part = None if part is None else part[(part["metric"] == "ft_top1") == (stage == "finetune")]
                if part is None or part.empty:
                    missing.append(f"{r['name']}: {path}")
                    continue
                rows.extend(part[COLUMNS].to_dict("records"))
    table = pd.DataFrame(rows, columns=COLUMNS).drop_duplicates(["rev", "encoder", "metric"], ignore_index=True)
    table["images"] = table["images"].astype(int)
    notes = []
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        notes.append(
            f"{len(missing)} prediction file(s) could not be read from their experiment or the saved copy: {shown}"
        )
    return table, notes


def correct(table: pd.DataFrame, rev: str, encoder: str, metric: str) -> np.ndarray | None:
    """Which test images the encoder got right on `metric` in experiment `rev`, or None if the table lacks it."""
    hit = table[(table["rev"] == rev) & (table["encoder"] == encoder) & (table["metric"] == metric)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return unpack(row["correct"], row["images"])


CHUNK_BYTES = 40_000_000  # one chunk's image counts, as float64: with its int64 copy, under ~100 MB


def two_way_bootstrap(
    per_seed_image_diffs: np.ndarray, level: float = 0.95, draws: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of the mean over test images of a per-image difference
    (shape seeds x images, e.g. correct_tested - correct_baseline), resampling seeds and test images, each with
    replacement and independently: a new seed would give another encoder, a new test set other images. Every seed
    is read on the same test images, so a draw resamples the same images for all of them. With one seed it
    resamples images only (there is no seed variance to see). A fixed `seed` gives the same interval."""
    d = np.asarray(per_seed_image_diffs, dtype=float)
    if d.ndim != 2:
        raise ValueError(f"per_seed_image_diffs must be seeds x images, got shape {d.shape}")
    seeds, images = d.shape
    if seeds < 1 or images < 1:
        raise ValueError(f"need at least 1 seed and 1 image, got {seeds} seed(s) and {images} image(s)")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    rng = np.random.default_rng(seed)
    chunk = max(1, CHUNK_BYTES // (8 * images))
    image_p, seed_p = np.full(images, 1 / images), np.full(seeds, 1 / seeds)
    statistic = np.empty(draws)
    for start in range(0, draws, chunk):
        n = min(chunk, draws - start)
        w = rng.multinomial(images, image_p, size=n).astype(float)  # draws x images: how often each image is drawn
        x = d @ w.T / images  # seeds x draws: each seed's mean over the resampled images
        v = rng.multinomial(seeds, seed_p, size=n)  # draws x seeds: how often each seed is drawn
        statistic[start : start + n] = (v * x.T).sum(axis=1) / seeds
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(statistic, [tail, 100 - tail])
    return float(low), float(high)
