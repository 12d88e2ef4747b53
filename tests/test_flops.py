"""FLOPs per pre-training (flops.py): the count against a hand computation, its two shortcuts against
direct counts, its random draws, and a variant's steps_factor end to end through the real dvc CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import dvc
from mae_exp.recipes import build
from mae_exp.training.flops import count_steps, schedule_flops, visible_count


def test_a_step_costs_what_a_hand_count_of_the_encoder_says(tiny_model_cfg):
    """Keeping 8 patches instead of 4 adds only encoder work (the decoder sees every token either way):
    per block qkv (3d^2), projection (d^2) and MLP (2 x 4d^2) per token, plus decoder_embed (d x d_dec),
    each a matmul of 2 FLOPs per multiply-add, three times over (forward, grad of input, grad of weight);
    and attention, QK^T and AV (2 T^2 d each, forward) plus four such matmuls backward: 12 T^2 d per block."""
    m, b = tiny_model_cfg.model, 4
    d, dd, depth = m.encoder_dim, m.decoder_dim, m.encoder_depth
    assert m.mlp_ratio == 4.0
    flops = count_steps(m, tiny_model_cfg.data.input_size, build(tiny_model_cfg, "original"), b, [4, 8], direct=True)
    t4, t8 = 4 + 1, 8 + 1  # the class token too
    linears = 3 * 2 * b * (t8 - t4) * (depth * 12 * d * d + d * dd)
    attention = 12 * b * d * depth * (t8**2 - t4**2)
    assert flops[8] - flops[4] == linears + attention


def test_the_shortcuts_give_the_direct_count_at_every_visible_count_and_over_a_curriculum(tiny_model_cfg):
    p = tiny_model_cfg
    m, size, batch = p.model, p.data.input_size, p.pretrain.batch_size
    every = list(range(1, 17))
    direct = count_steps(m, size, build(p, "improved"), batch, every, direct=True)
    assert count_steps(m, size, build(p, "improved"), batch, every) == direct  # from batches 2 and 4
    total = 27
    steps = [visible_count(16, 0.5 + 0.25 * min(1.0, i / total / 0.5)) for i in range(total)]
    assert p.improved.mask_ratio_start == 0.5 and p.improved.curriculum_fraction == 0.5
    assert schedule_flops(m, size, build(p, "improved"), batch, total) == sum(direct[k] for k in steps)
    # 75% masking throughout: every step costs the same
    assert schedule_flops(m, size, build(p, "original"), batch, total) == total * direct[4]


def test_counting_draws_nothing_from_the_training_run_s_generators(tiny_model_cfg):
    p = tiny_model_cfg
    torch.manual_seed(0)
    before = torch.get_rng_state()
    schedule_flops(p.model, p.data.input_size, build(p, "improved"), p.pretrain.batch_size, 27)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_steps_factor_trains_more_steps_at_the_same_schedule_shape_and_counts_their_flops(repo):
    dvc("repro", "pretrain@original", cwd=repo)
    plain = json.loads((repo / "metrics/pretrain/original/metrics.json").read_text())
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["original"]["steps_factor"] = 1.5
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    dvc("repro", "pretrain@original", cwd=repo)
    longer = json.loads((repo / "metrics/pretrain/original/metrics.json").read_text())
    assert plain["steps"] == 27 and longer["steps"] == 40  # 9 steps an epoch x 3 epochs (x 1.5, rounded)
    assert longer["flops"] / plain["flops"] == pytest.approx(40 / 27, rel=1e-12)
    assert plain["flops"] > 0 and plain["wall_time_s"] > 0
    lr = (repo / "metrics/pretrain/original/plots/metrics/lr.tsv").read_text().splitlines()
    assert lr[-1].split("\t")[0] == "40"  # the last step is logged, in the fifth (partial) epoch
