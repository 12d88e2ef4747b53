"""Readouts of a frozen encoder: logistic and BN + linear probes and weighted kNN, on the class token and on
mean-pooled patches.

One feature pass per split gives both poolings (the [cls] token, as MAE's linear probe reads it, and the
mean of the patch tokens), then three readouts of each:
- logistic probe: multinomial logistic regression on standardised features, fitted to convergence by
  L-BFGS (a convex problem: no learning rate, no epochs, one optimum per L2 strength);
- linear probe, as in facebookresearch/mae `main_linprobe.py`: BatchNorm1d(affine=False) then a linear
  layer initialised with std 0.01, SGD with momentum (LARS there; one linear layer here), warmup + cosine,
  weight decay as the grid gives it. Both poolings' heads, at every (lr, weight decay) of the grid, train
  in one loop on the same batches (train_grid);
- weighted kNN, as DINO (`eval_knn.py`) and solo-learn compute it: cosine similarity, the k nearest
  training features vote for their class with weight exp(similarity / temperature).
Features are extracted once and cached (the encoder is frozen; MAE crops and flips every epoch).

Each readout's setting is chosen by k-fold cross-validation (linear_probe.folds, stratified, drawn from the
seed) on the whole labeled train split, validation included: every grid point is fitted on k - 1 folds and
scored on the one left out, k times, so every train image scores every point once (`cv_top1`: thousands of
images, not the 300 of one validation split). Ties go to the point nearest the middle of the grid. The
chosen setting is then refitted on the whole labeled train split and the test split is read once, after
every choice is made; each readout's test predictions are saved (`--predictions`, one array per readout).
`<readout>_val_top1` is the chosen setting's out-of-fold top-1 on the validation images alone: the images
fine-tuning is scored on, by models that never saw them. The same grids for every encoder.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_encoder
from ..data.prepared import labeled, load_meta
from ..model import ViTEncoder
from ..plumbing.config import Params
from ..plumbing.errors import TrainingDiverged, diverged
from ..plumbing.files import save_predictions
from ..plumbing.progress import console, progress
from ..training.distributed import describe
from ..training.optim import best, grid, warmup_cosine
from ..training.runtime import autocast, batches, eval_batch, open_live, setup
from .measures import READOUTS, grid_edges

POOLINGS = ("cls", "mean")
READOUT_NAMES = tuple(READOUTS)  # logreg_, linear_, knn_ x cls, mean


@torch.no_grad()
def extract_features(
    encoder: ViTEncoder, images, input_size: int, device, amp_dtype, label: str, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """All patches, no masking: {"cls": the class token, "mean": the mean of the patch tokens}, one pass."""
    encoder.eval()
    feats = {pooling: [] for pooling in POOLINGS}
    with progress() as bar:
        for idx in bar.track(batches(len(images), batch_size, drop_last=False), description=f"features {label}"):
            x = eval_batch(images, idx, input_size, device)
            with autocast(device, amp_dtype):
                tokens = encoder(encoder.embed(x)).float()
            feats["cls"].append(tokens[:, 0])
            feats["mean"].append(tokens[:, 1:].mean(dim=1))
    return {pooling: torch.cat(f) for pooling, f in feats.items()}


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == labels).float().mean().item()


@torch.no_grad()
def knn_votes(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    x: torch.Tensor,
    num_classes: int,
    k: int,
    temperature: float,
    chunk: int = 1024,
) -> torch.Tensor:
    """Weighted kNN (DINO, solo-learn): cosine similarity to every training feature; the k most similar
    vote for their class with weight exp(similarity / temperature). Returns the votes, (len(x), classes):
    the prediction is the class with the largest sum."""
    train_x = F.normalize(train_x, dim=1)
    k = min(k, len(train_y))
    votes = []
    for part in F.normalize(x, dim=1).split(chunk):
        sim, idx = (part @ train_x.T).topk(k, dim=1)
        v = torch.zeros(len(part), num_classes, device=x.device, dtype=torch.float64)
        votes.append(v.scatter_add_(1, train_y[idx], (sim.double() / temperature).exp()))  # float64: T 0.01 fits
    return torch.cat(votes)


class GridHeads(nn.Module):
    """The linear heads of every grid point on one feature set: MAE's BatchNorm1d(affine=False), shared (it
    has no parameter, so its output does not depend on lr or weight decay), then one linear layer per point,
    held as a (points, dim, classes) weight. forward -> logits (points, batch, classes)."""

    def __init__(self, dim: int, num_classes: int, points: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.weight = nn.Parameter(torch.empty(points, dim, num_classes))
        self.bias = nn.Parameter(torch.zeros(points, num_classes))
        nn.init.trunc_normal_(self.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,pdc->pbc", self.norm(x), self.weight) + self.bias[:, None]

    def point(self, i: int) -> nn.Sequential:
        """Point i's head as one BN + linear module (eval mode)."""
        dim, classes = self.weight.shape[1:]
        head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, classes))
        head = head.to(self.weight.device)
        head[0].load_state_dict(self.norm.state_dict())
        with torch.no_grad():
            head[1].weight.copy_(self.weight[i].T)
            head[1].bias.copy_(self.bias[i])
        return head.eval()


def train_grid(
    xs: dict[str, torch.Tensor],
    y: torch.Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    points: list[tuple[float, float]],
    seed: int,
    on_epoch=None,
) -> tuple[dict[str, GridHeads], dict[tuple[int, str], str]]:
    """A BN + linear head for every feature set and every (lr, weight decay) point, all trained in one loop on
    the same batches: SGD with momentum 0.9 (torch.optim.SGD's update, written out so that each point has its
    own lr and weight decay), warmup + cosine. No two heads share a parameter, so one backward of the summed
    loss trains each as if alone, and a grid costs about what one point does.
    `on_epoch(epoch, heads, train_losses)` after each epoch, train_losses[name]: (points,) tensor.
    Returns the heads and {(point, name): message} for each head whose loss diverged (it trains on, unused)."""
    torch.manual_seed(seed)
    device = y.device
    heads = {name: GridHeads(x.shape[1], num_classes, len(points)).to(device) for name, x in xs.items()}
    lrs = torch.tensor([lr for lr, _ in points], device=device)
    decays = torch.tensor([wd for _, wd in points], device=device)
    momentum = {param: torch.zeros_like(param) for head in heads.values() for param in (head.weight, head.bias)}
    gen = torch.Generator().manual_seed(seed)
    per_epoch = len(batches(len(y), batch_size, drop_last=False))
    total, warmup = epochs * per_epoch, max(1, epochs // 10) * per_epoch  # MAE: 10 of 90 epochs of warmup
    failed: dict[tuple[int, str], str] = {}
    step = 0
    for epoch in range(epochs):
        loss_sums = {name: torch.zeros(len(points), device=device) for name in heads}
        for head in heads.values():
            head.train()
        for idx in batches(len(y), batch_size, gen, drop_last=False):
            idx = idx.to(device)
            losses = {}
            for name, head in heads.items():
                logits = head(xs[name][idx])  # (points, batch, classes)
                losses[name] = (
                    F.cross_entropy(logits.flatten(0, 1), y[idx].repeat(len(points)), reduction="none")
                    .view(len(points), -1)
                    .mean(dim=1)
                )
            for head in heads.values():
                head.zero_grad(set_to_none=True)
            sum(loss.sum() for loss in losses.values()).backward()
            with torch.no_grad():
                factor = warmup_cosine(step, total, warmup, 1.0)  # the schedule; each point's lr scales it
                for param, buf in momentum.items():
                    shape = (-1,) + (1,) * (param.dim() - 1)
                    buf.mul_(0.9).add_(param.grad + decays.view(shape) * param)  # SGD: d = g + wd p; buf = m buf + d
                    param.sub_(factor * lrs.view(shape) * buf)
            for name, loss in losses.items():
                loss_sums[name] += loss.detach()
            step += 1
        for head in heads.values():
            head.eval()
        train_losses = {name: s / per_epoch for name, s in loss_sums.items()}
        # A diverged head would report chance accuracy as the encoder's. Cross-entropy starts near ln(classes)
        # (logits near 0) and only falls when the head learns: 100 times that is divergence, NaN or not.
        for name, per_point in train_losses.items():
            for i, train_loss in enumerate(per_point.tolist()):
                if diverged(train_loss, 100 * math.log(num_classes)) and (i, name) not in failed:
                    failed[(i, name)] = (
                        f"linear probe ({name} head): the training loss became {train_loss:.3g} in "
                        f"epoch {epoch + 1} (from about {math.log(num_classes):.2f}); lower "
                        f"linear_probe.lr (now {points[i][0]:g})"
                    )
        if len(failed) == len(points) * len(heads):
            break
        if on_epoch:
            with torch.no_grad():
                on_epoch(epoch, heads, train_losses)
    return heads, failed


def train_heads(
    xs: dict[str, torch.Tensor],
    y: torch.Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    on_epoch=None,
) -> dict[str, nn.Module]:
    """One BN (no affine) + linear head per feature set at one (lr, weight decay), trained in one loop on the
    same batches (train_grid with one point). `on_epoch(epoch, heads, train_losses)` after each epoch. A
    head whose loss diverges stops the run (TrainingDiverged)."""

    def each_epoch(epoch: int, heads: dict[str, GridHeads], train_losses: dict[str, torch.Tensor]) -> None:
        on_epoch(
            epoch,
            {name: head.point(0) for name, head in heads.items()},
            {name: loss[0].item() for name, loss in train_losses.items()},
        )

    heads, failed = train_grid(
        xs, y, num_classes, epochs, batch_size, [(lr, weight_decay)], seed, each_epoch if on_epoch else None
    )
    if failed:
        raise TrainingDiverged(next(iter(failed.values())))
    return {name: head.point(0) for name, head in heads.items()}


def accuracies(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Top-1 of each grid point's logits (points, n, classes)."""
    return (logits.argmax(dim=-1) == labels).float().mean(dim=1).tolist()


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold number of every image: each class's images shuffled (from the seed), then dealt round-robin, so
    every fold holds each class's share to within one image."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    start = 0  # where the next class's deal starts, so that small classes do not all fill fold 0
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        fold[rows] = (start + np.arange(len(rows))) % folds
        start = (start + len(rows)) % folds
    return fold


class Standardise:
    """Features minus the fitting set's mean, over its standard deviation (the logistic probe's input)."""

    def __init__(self, x: torch.Tensor):
        self.mean, self.std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, start: torch.Tensor | None = None, tol: float = 1e-6
) -> tuple[torch.Tensor, float]:
    """Multinomial logistic regression, mean cross-entropy + l2/2 |W|^2 (the bias not penalised), fitted by
    L-BFGS (strong-Wolfe line search, float64) until the largest entry of the gradient is below `tol`: a
    strictly convex problem, one optimum whatever the start (`start` only saves iterations).
    L-BFGS runs in preconditioned coordinates, W = M V with M = (S + l2 I)^-1/2 and S = x'x / n, the Hessian of
    the penalised part up to the softmax's curvature: encoder features are strongly correlated (S's eigenvalues
    span ten orders), which took plain L-BFGS thousands of steps at a weak L2 and takes this tens. The loss and
    gradient are written out. Returns the (dim + 1, classes) weights, bias in the last row, and the largest
    gradient entry left (in W)."""
    x = x.double()
    n = len(x)
    target = F.one_hot(y, num_classes).double()
    eigenvalues, vectors = torch.linalg.eigh(x.T @ x / n)
    root = (eigenvalues.clamp_min(0) + l2).sqrt()
    to_w, from_w = (vectors / root) @ vectors.T, (vectors * root) @ vectors.T  # M and its inverse
    penalty = (vectors / root.square()) @ vectors.T  # M^2: |W|^2 = |M V|^2 = V' M^2 V
    x_pre = x @ to_w
    v = torch.zeros(x.shape[1] + 1, num_classes, dtype=torch.float64, device=x.device)
    if start is not None:
        v[:-1], v[-1] = from_w @ start[:-1], start[-1]
    v.grad = torch.zeros_like(v)
    opt = torch.optim.LBFGS(
        [v],
        lr=1.0,
        max_iter=500,
        tolerance_grad=tol / 3,  # in V; the stop below checks W (|grad W| <= |M^-1| |grad V|)
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    @torch.no_grad()
    def closure() -> torch.Tensor:
        logits = x_pre @ v[:-1] + v[-1]
        log_norm = logits.logsumexp(dim=1, keepdim=True)
        residual = ((logits - log_norm).exp() - target) / n
        v.grad = torch.cat([x_pre.T @ residual + l2 * penalty @ v[:-1], residual.sum(0, keepdim=True)])
        return (log_norm.squeeze(1) - (logits * target).sum(1)).mean() + 0.5 * l2 * (v[:-1] * (penalty @ v[:-1])).sum()

    for _ in range(10):  # LBFGS stops at max_iter, a flat step or its own tolerance; another call starts afresh
        opt.step(closure)
        w = torch.cat([to_w @ v[:-1], v[-1:]]).detach()
        logits = x @ w[:-1] + w[-1]
        residual = ((logits - logits.logsumexp(dim=1, keepdim=True)).exp() - target) / n
        left = torch.cat([x.T @ residual + l2 * w[:-1], residual.sum(0, keepdim=True)]).abs().max().item()
        if left < tol:
            break
    return w, left


def logistic_logits(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return x.double() @ w[:-1] + w[-1]


def logistic_predictions(x_fit, y_fit, x, num_classes: int, l2s: list[float]) -> torch.Tensor:
    """Predicted class of every row of x by the logistic probe fitted on (x_fit, y_fit) (standardised by
    x_fit's statistics) at every L2 strength: (len(l2s), len(x)). Fitted from the strongest L2 down, each fit
    starting at the previous optimum (the same optima, in fewer iterations)."""
    scale = Standardise(x_fit)
    predictions = torch.empty(len(l2s), len(x), dtype=torch.long)
    w = None
    for i in sorted(range(len(l2s)), key=lambda i: -l2s[i]):
        w, _ = fit_logistic(scale(x_fit), y_fit, num_classes, l2s[i], w)
        predictions[i] = logistic_logits(w, scale(x)).argmax(dim=1).cpu()
    return predictions


@torch.no_grad()
def knn_predictions(train_x, train_y, x, num_classes: int, points: list[dict]) -> torch.Tensor:
    """Predicted class of every row of x at every (k, temperature) point: (points, len(x))."""
    return torch.stack([knn_votes(train_x, train_y, x, num_classes, **pt).argmax(dim=1) for pt in points])


def cross_validate(
    feats: dict[str, torch.Tensor],
    y: torch.Tensor,
    fold: torch.Tensor,
    classes: int,
    cfg,
    points: dict[str, list[dict]],
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]], dict[tuple[int, str], str]]:
    """Every readout at every grid point, fitted on all folds but one and scored on that one, for each fold.
    Returns, per readout, the out-of-fold prediction of every image at every point (points, n); per pooling,
    the BN + linear heads' out-of-fold predictions after every epoch (a list, one (points, n) array an epoch);
    and {(point, pooling): message} for a head that diverged in any fold (its score is then None)."""
    n = len(y)
    oof = {r: np.zeros((len(points[r]), n), dtype=np.int64) for r in READOUT_NAMES}
    per_epoch = {
        pool: [np.zeros((len(points[f"linear_{pool}"]), n), dtype=np.int16) for _ in range(cfg.epochs)]
        for pool in POOLINGS
    }
    failed: dict[tuple[int, str], str] = {}
    folds = int(fold.max().item()) + 1
    with progress() as bar:
        for f in bar.track(range(folds), description=f"{folds}-fold cross-validation"):
            held, fit = (fold == f).nonzero().squeeze(1), (fold != f).nonzero().squeeze(1)
            held_np = held.cpu().numpy()
            for pool in POOLINGS:
                x_fit, x_held = feats[pool][fit], feats[pool][held]
                oof[f"logreg_{pool}"][:, held_np] = logistic_predictions(
                    x_fit, y[fit], x_held, classes, [pt["l2"] for pt in points[f"logreg_{pool}"]]
                ).numpy()
                oof[f"knn_{pool}"][:, held_np] = (
                    knn_predictions(x_fit, y[fit], x_held, classes, points[f"knn_{pool}"]).cpu().numpy()
                )

            def record(epoch: int, heads: dict[str, GridHeads], _losses, held=held, held_np=held_np) -> None:
                for pool, head in heads.items():
                    per_epoch[pool][epoch][:, held_np] = head(feats[pool][held]).argmax(-1).cpu().numpy()

            _, diverged_here = train_grid(
                {pool: feats[pool][fit] for pool in POOLINGS},
                y[fit],
                classes,
                cfg.epochs,
                cfg.batch_size,
                [(pt["lr"], pt["weight_decay"]) for pt in points["linear_cls"]],
                seed + f,
                record,
            )
            for (i, pool), message in diverged_here.items():
                failed.setdefault((i, pool), message)
    for pool in POOLINGS:  # the heads as trained (a fold whose every point diverged stopped early: all None)
        oof[f"linear_{pool}"] = per_epoch[pool][-1]
    return oof, per_epoch, failed


def linear_probe(
    p: Params,
    encoder_path: str | Path,
    data_root: str | Path,
    name: str,
    live_dir: str | Path,
    predictions_path: str | Path | None = None,
) -> dict:
    """Every readout of one encoder, each at the setting of its grid that cross-validation scores best; DVCLive
    logs the chosen BN + linear heads' curves and a flat summary: `<readout>_{top1,val_top1,cv_top1}` (test,
    validation images out of fold, every train image out of fold; see measures.READOUTS), `chosen` (each
    readout's setting) and `search` (every grid point's `cv_top1`; measures.grid_edges marks a choice at an
    edge of its grid). The same grids for every encoder; the test split is read once, after choosing."""
    cfg = p.linear_probe
    device, amp_dtype = setup("auto", p.threads, p.seed)
    encoder = load_encoder(encoder_path, p).to(device)
    points = {}
    for pool in POOLINGS:
        points[f"logreg_{pool}"] = grid(l2=cfg.logreg_l2)
        points[f"linear_{pool}"] = grid(lr=cfg.lr, weight_decay=cfg.weight_decay)
        points[f"knn_{pool}"] = grid(k=cfg.knn_k, temperature=cfg.knn_temperature)
    console.print(
        f"linear probe {name}: class token and mean-pooled patches, logistic probes ({len(cfg.logreg_l2)} L2 "
        f"strengths), BN + linear heads ({len(points['linear_cls'])} settings of lr x weight decay) and kNN "
        f"({len(points['knn_cls'])} of k x T), each chosen by {cfg.folds}-fold cross-validation on the labeled "
        f"train split, {describe(device, p.threads)}",
        highlight=False,
        soft_wrap=True,  # one line in a log, whatever the console's width
    )
    t0 = time.perf_counter()
    classes = len(load_meta(data_root)["classes"])
    splits = {part: labeled(data_root, part, p.data.val_fraction) for part in ("train", "val")}
    labels_np = np.concatenate([splits["train"].labels, splits["val"].labels])
    is_val = np.concatenate([np.zeros(len(splits["train"].labels), bool), np.ones(len(splits["val"].labels), bool)])
    fold = stratified_folds(labels_np, cfg.folds, p.seed)
    fitted = len(labels_np) - np.bincount(fold).max()  # the fewest images a cross-validation fit sees
    for key, value in (("batch_size", cfg.batch_size), ("knn_k", max(cfg.knn_k))):  # refused, as finetune's batch is
        if value > fitted:
            raise ValueError(
                f"linear_probe.{key} ({value}) is larger than the {fitted} images a cross-validation fit trains "
                f"on ({len(labels_np)} labeled train images, linear_probe.folds {cfg.folds}): lower "
                f"linear_probe.{key}"
            )
    parts = {
        part: extract_features(encoder, s.images, p.data.input_size, device, amp_dtype, part)
        for part, s in splits.items()
    }
    feats = {pool: torch.cat([parts["train"][pool], parts["val"][pool]]) for pool in POOLINGS}
    y = torch.from_numpy(labels_np).to(device)
    t_features = time.perf_counter() - t0

    oof, per_epoch, failed = cross_validate(feats, y, torch.from_numpy(fold).to(device), classes, cfg, points, p.seed)
    correct = {r: oof[r] == labels_np for r in READOUT_NAMES}  # (points, n)
    cv = {
        r: [
            None if (i, r.split("_")[1]) in failed and r.startswith("linear") else round(float(c.mean()), 4)
            for i, c in enumerate(correct[r])
        ]
        for r in READOUT_NAMES
    }
    at = {r: best(cv[r], points[r]) for r in READOUT_NAMES}
    for pool in POOLINGS:
        if at[f"linear_{pool}"] is None:  # every lr diverged: the stage stops, as with one lr
            raise TrainingDiverged(
                failed[(0, pool)] + (", and so did every other grid point" if len(points[f"linear_{pool}"]) > 1 else "")
            )
    chosen = {r: points[r][at[r]] for r in READOUT_NAMES}
    search = {
        r: {**{axis: [pt[axis] for pt in points[r]] for axis in points[r][0]}, "cv_top1": cv[r]} for r in READOUT_NAMES
    }
    edges = {r: grid_edges(search[r], chosen[r]) for r in READOUT_NAMES}
    summary = {}
    for r in READOUT_NAMES:
        summary[f"{r}_cv_top1"] = cv[r][at[r]]
        summary[f"{r}_val_top1"] = round(float(correct[r][at[r]][is_val].mean()), 4)
    t_search = time.perf_counter() - t0 - t_features

    # the chosen settings refitted on every labeled train image, then the test split, read once
    scale = {pool: Standardise(feats[pool]) for pool in POOLINGS}
    logistic = {
        pool: fit_logistic(scale[pool](feats[pool]), y, classes, chosen[f"logreg_{pool}"]["l2"])[0] for pool in POOLINGS
    }
    refit_curves = []  # per epoch: {pooling: (train loss, train top-1)} of the refitted heads

    def record(epoch: int, trained: dict[str, GridHeads], losses: dict[str, torch.Tensor]) -> None:
        refit_curves.append(
            {pool: (losses[pool].tolist(), accuracies(head(feats[pool]), y)) for pool, head in trained.items()}
        )

    head_points = [(chosen[f"linear_{pool}"]["lr"], chosen[f"linear_{pool}"]["weight_decay"]) for pool in POOLINGS]
    heads, refit_failed = train_grid(feats, y, classes, cfg.epochs, cfg.batch_size, head_points, p.seed, record)
    for pool in POOLINGS:
        if (POOLINGS.index(pool), pool) in refit_failed:
            raise TrainingDiverged(refit_failed[(POOLINGS.index(pool), pool)] + " (refitted on every train image)")

    live = open_live(live_dir)
    val_rows = np.flatnonzero(is_val)
    for epoch in range(len(refit_curves)):  # the refitted heads' curves, and the chosen point's out-of-fold ones
        live.step = epoch + 1
        for i, pool in enumerate(POOLINGS):
            loss, train_top1 = (values[i] for values in refit_curves[epoch][pool])
            held = per_epoch[pool][epoch][at[f"linear_{pool}"]]
            live.log_metric(f"linear_{pool}_train_loss", loss)
            live.log_metric(f"linear_{pool}_train_top1", train_top1)
            live.log_metric(f"linear_{pool}_val_top1", float((held[val_rows] == labels_np[val_rows]).mean()))

    test = labeled(data_root, "test", p.data.val_fraction)  # read once, now that every choice is made
    x_test = extract_features(encoder, test.images, p.data.input_size, device, amp_dtype, "test")
    predictions = {}
    with torch.no_grad():
        for i, pool in enumerate(POOLINGS):
            x = x_test[pool]
            predictions[f"logreg_{pool}"] = logistic_logits(logistic[pool], scale[pool](x)).argmax(1)
            predictions[f"linear_{pool}"] = heads[pool].point(i)(x).argmax(1)
            predictions[f"knn_{pool}"] = knn_predictions(feats[pool], y, x, classes, [chosen[f"knn_{pool}"]])[0]
    predictions = {r: predictions[r].cpu().numpy() for r in READOUT_NAMES}
    for r in READOUT_NAMES:
        summary[f"{r}_top1"] = round(float((predictions[r] == test.labels).mean()), 4)
    if predictions_path is not None:
        save_predictions(predictions_path, predictions, test.labels)
    live.summary.update(summary)
    live.summary.update(
        {
            "chosen": chosen,
            "search": search,
            "folds": cfg.folds,
            "epochs": cfg.epochs,
            "test_images": len(test.labels),
            "search_s": round(t_search, 1),
            "wall_time_s": round(time.perf_counter() - t0, 1),
        }
    )
    live.end()
    for r in READOUT_NAMES:
        setting = ", ".join(
            f"{k} {v:g}" + (f" (grid's {edges[r][k]})" if k in edges[r] else "") for k, v in chosen[r].items()
        )
        console.print(
            f"{name} {r} ({setting}): cross-validated top-1 {summary[f'{r}_cv_top1']:.4f}, test top-1 "
            f"{summary[f'{r}_top1']:.4f}",
            highlight=False,
        )
    at_edge = sum(bool(marks) for marks in edges.values())
    console.print(
        f"({len(test.labels):,} test images; {at_edge} of {len(READOUT_NAMES)} chosen settings at an edge of "
        "their grid)",
        highlight=False,
    )
    return dict(live.summary)
