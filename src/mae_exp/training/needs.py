"""What a recipe needs built before it pre-trains (recipes.Need): stage `recipe_needs@<recipe>` builds it into
models/<recipe>/needs.pt, a DVC dependency of that recipe's pre-training, so a teammate pulls it and an edit of
its settings re-runs only that recipe's branch. A recipe that needs nothing gets a file holding nothing.

  - perceptual_cnn: SMAE's frozen CNN, trained with labels on the labeled train split (validation held out),
    the one place a recipe sees labels before the readouts; the report says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoints import read_checkpoint, save_checkpoint
from ..data.prepared import labeled, load_meta
from ..plumbing.config import Params
from ..plumbing.progress import console
from ..recipes import Need, build
from .perceptual import PerceptualCNN, train_perceptual_cnn
from .runtime import setup

BATCH_SIZE = 128  # the CNN's training batch; its epochs, width, depth and lr are the recipe's settings


def untrained(need: Need, input_size: int, num_classes: int = 10) -> torch.nn.Module:
    """`need`'s network as built, untrained and frozen: what the FLOPs count runs (the same operations)."""
    if need.name != "perceptual_cnn":
        raise ValueError(f"unknown need {need.name!r}: expected perceptual_cnn")
    return PerceptualCNN(num_classes, need.settings["width"], need.settings["depth"]).freeze()


def build_needs(p: Params, recipe_name: str, data_root: str | Path, out: str | Path) -> Path:
    """Train what recipe `recipe_name` needs on the labeled train split and save it (or save nothing)."""
    need = build(p, recipe_name).needs
    if need is None:
        return save_checkpoint({"needs": {}}, out)
    device, _ = setup("fp32", p.threads, p.seed)
    train = labeled(data_root, "train", p.data.val_fraction)
    classes = len(load_meta(data_root)["classes"])
    cnn = train_perceptual_cnn(
        np.asarray(train.images[np.arange(len(train.labels))]),
        train.labels,
        epochs=need.settings["epochs"],
        batch_size=BATCH_SIZE,
        lr=need.settings["lr"],
        seed=p.seed,
        device=device,
        width=need.settings["width"],
        depth=need.settings["depth"],
    )
    console.print(
        f"recipe_needs {recipe_name}: perceptual CNN trained with labels on {len(train.labels):,} train images",
        highlight=False,
    )
    state = {k: v.cpu() for k, v in cnn.state_dict().items()}
    return save_checkpoint({"needs": {need.name: {"settings": need.settings, "classes": classes, "state": state}}}, out)


def load(path: str | Path) -> dict[str, torch.nn.Module]:
    """The frozen networks `build_needs` saved, by need name."""
    saved = read_checkpoint(path, "run `dvc repro` to build it (stage recipe_needs)")["needs"]
    nets = {}
    for name, entry in saved.items():
        net = untrained(Need(name, entry["settings"]), 0, entry["classes"])
        net.load_state_dict(entry["state"])
        nets[name] = net.freeze()
    return nets
