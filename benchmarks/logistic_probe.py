"""The logistic probe's L-BFGS: plain against preconditioned coordinates, on one encoder's features.

Why probe.fit_logistic preconditions. Both fit the same multinomial logistic regression (mean cross-entropy
+ l2/2 |W|^2, bias not penalised) on the same standardised features, from zero, to the same stop: the largest
entry of the gradient in W below --tol. `plain` is torch.optim.LBFGS on W itself (strong-Wolfe line search,
float64, the hand-written loss and gradient); `preconditioned` is probe.fit_logistic, LBFGS on V with
W = (S + l2 I)^-1/2 V, S = x'x / n. Prints, per L2 strength, the loss evaluations each took, their wall
times, the ratio, the largest gradient entry each left and the largest difference between their weights.

    dvc repro pretrain_original                       # the default's original encoder, seed 42
    python benchmarks/logistic_probe.py               # its mean-pooled features of the train split
    python benchmarks/logistic_probe.py --pooling cls --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mae_exp.checkpoints import load_encoder  # noqa: E402
from mae_exp.data.prepared import labeled, load_meta  # noqa: E402
from mae_exp.evaluation import probe  # noqa: E402
from mae_exp.plumbing.config import load_params  # noqa: E402


def plain(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, tol: float) -> tuple[torch.Tensor, int]:
    """LBFGS on W, restarted (as fit_logistic is) until the gradient is below tol; returns W and evaluations."""
    x = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
    target = F.one_hot(y, classes).double()
    penalised = torch.ones(x.shape[1], 1, dtype=torch.float64)
    penalised[-1] = 0.0
    w = torch.zeros(x.shape[1], classes, dtype=torch.float64)
    w.grad = torch.zeros_like(w)
    calls = [0]
    opt = torch.optim.LBFGS(
        [w], max_iter=500, tolerance_grad=tol, tolerance_change=1e-15, history_size=20, line_search_fn="strong_wolfe"
    )

    @torch.no_grad()
    def closure():
        calls[0] += 1
        logits = x @ w
        log_norm = logits.logsumexp(dim=1, keepdim=True)
        w.grad = x.T @ ((logits - log_norm).exp() - target) / len(x) + l2 * penalised * w
        return (log_norm.squeeze(1) - (logits * target).sum(1)).mean() + 0.5 * l2 * (penalised * w * w).sum()

    for _ in range(10):
        opt.step(closure)
        closure()
        if w.grad.abs().max().item() < tol:
            break
    return w.detach(), calls[0]


def counting_evaluations(fit, *args, **kwargs):
    """fit(*args, **kwargs) and the number of loss evaluations its LBFGS made."""
    calls, real = [0], torch.optim.LBFGS.step

    def step(self, closure):
        def counted():
            calls[0] += 1
            return closure()

        return real(self, counted)

    torch.optim.LBFGS.step = step
    try:
        return fit(*args, **kwargs), calls[0]
    finally:
        torch.optim.LBFGS.step = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoder", default="models/original/encoder.pt")
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--pooling", default="mean", choices=["cls", "mean"])
    ap.add_argument("--l2", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4, 1e-5])
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    p = load_params("params.yaml")
    train = labeled(a.data, "train", p.data.val_fraction)
    encoder = load_encoder(a.encoder, p)
    x = probe.extract_features(encoder, train.images, p.data.input_size, torch.device("cpu"), None, "train")[a.pooling]
    x, y = probe.Standardise(x)(x), torch.from_numpy(train.labels)
    classes = len(load_meta(a.data)["classes"])
    eigenvalues = torch.linalg.eigvalsh(x.double().T @ x.double() / len(x))
    print(
        f"{a.encoder} {a.pooling}: {len(x)} x {x.shape[1]}, eigenvalues of x'x/n {eigenvalues.min():.1e} to "
        f"{eigenvalues.max():.1f}; {torch.get_num_threads()} threads; stop at |gradient| < {a.tol:g}"
    )
    print(
        f"{'l2':>8} {'plain evals':>12} {'s':>7} {'precond evals':>14} {'s':>7} {'time ratio':>10} "
        f"{'plain |g|':>10} {'precond |g|':>12} {'max |dW|':>9}"
    )
    for l2 in a.l2:
        t0 = time.perf_counter()
        w_plain, n_plain = plain(x, y, classes, l2, a.tol)
        t1 = time.perf_counter()
        (w_pre, left), n_pre = counting_evaluations(probe.fit_logistic, x, y, classes, l2, tol=a.tol)
        t2 = time.perf_counter()
        xb = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
        grad_plain = w_plain.clone().requires_grad_()
        (F.cross_entropy(xb @ grad_plain, y) + 0.5 * l2 * grad_plain[:-1].square().sum()).backward()
        print(
            f"{l2:>8g} {n_plain:>12} {t1 - t0:>7.2f} {n_pre:>14} {t2 - t1:>7.2f} {(t1 - t0) / (t2 - t1):>10.1f} "
            f"{grad_plain.grad.abs().max().item():>10.1e} {left:>12.1e} "
            f"{(w_plain[:-1] - w_pre[:-1]).abs().max().item():>9.1e}"
        )


if __name__ == "__main__":
    main()
