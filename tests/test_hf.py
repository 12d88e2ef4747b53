"""Hugging Face interop, with transformers' ViTMAE as the oracle: this project's MAE exported to a transformers
folder computes the same masks, encoder tokens, reconstructions, loss and gradients; weights come back in from
transformers folders and facebookresearch/mae checkpoints without loss; a mismatch names its tensor.
transformers is optional for users: without it these tests skip, except under CI, where they fail."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from conftest import copy_built, dvc
from mae_exp.checkpoints import load_encoder, save_checkpoint
from mae_exp.evaluation.finetune import finetune
from mae_exp.model import MaskedAutoencoderViT, ViTEncoder
from mae_exp.plumbing.config import ModelConfig, as_dict, load_params
from mae_exp.training import hf

try:
    import transformers
except ImportError:  # pragma: no cover - depends on the environment
    transformers = None
    if os.environ.get("CI"):
        pytest.fail("transformers is not installed; CI is set, so this is a failure, not a skip", pytrace=False)
pytestmark = pytest.mark.skipif(transformers is None, reason="transformers is not installed (pip install -e '.[dev]')")

SIZE = 16
CFG = ModelConfig(
    patch_size=4,
    encoder_dim=32,
    encoder_depth=2,
    encoder_heads=2,
    decoder_dim=16,
    decoder_depth=2,
    decoder_heads=4,
    mlp_ratio=2.0,
    norm_pix_loss=True,
)
GRID = (SIZE // CFG.patch_size) ** 2


def ours(cfg: ModelConfig = CFG, seed: int = 0) -> MaskedAutoencoderViT:
    """A model whose every weight matters: initialisation leaves biases 0 and LayerNorms 1, which would hide a
    bias or a LayerNorm mapped to the wrong place; a random shift of every tensor shows it."""
    torch.manual_seed(seed)
    model = MaskedAutoencoderViT(cfg, SIZE)
    with torch.no_grad():
        for t in model.parameters():
            t.add_(0.1 * torch.randn_like(t))
    return model


def export(model: MaskedAutoencoderViT, tmp_path, mask_ratio: float = 0.75):
    checkpoint = save_checkpoint(
        {"model": as_dict(model.cfg), "input_size": SIZE, "model_state": model.state_dict()}, tmp_path / "checkpoint.pt"
    )
    return hf.export(checkpoint, tmp_path / "hf", mask_ratio)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5, scale: float = 0.0) -> float:
    """Largest difference relative to b's largest entry (or `scale` if larger: a gradient that is 0 in exact
    arithmetic, such as the attention keys' bias, is rounding noise on both sides); asserted below tol."""
    err = ((a - b).abs().max() / max(b.abs().max().item(), scale, 1e-12)).item()
    assert err < tol, f"relative difference {err:.2e}"
    return err


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_transformers_computes_what_this_mae_computes(tmp_path, norm_pix_loss):
    cfg = CFG.model_copy(update={"norm_pix_loss": norm_pix_loss})
    model = ours(cfg)
    folder = export(model, tmp_path)
    theirs = transformers.ViTMAEForPreTraining.from_pretrained(folder)
    assert theirs.config.layer_norm_eps == 1e-6 and theirs.config.norm_pix_loss is norm_pix_loss
    images = torch.randn(4, 3, SIZE, SIZE)
    noise = torch.rand(4, GRID)

    recon = model(images, 0.75, noise)
    out = theirs(pixel_values=images, noise=noise)
    encoded = theirs.vit(pixel_values=images, noise=noise).last_hidden_state  # final LayerNorm applied, as ours
    assert torch.equal(out.mask, recon.mask)
    close(encoded, recon.latent)
    close(out.logits, recon.pred)
    close(out.loss, recon.loss)  # the model's one loss: the masked MSE

    recon.loss.backward()
    out.loss.backward()
    mine = hf.to_hf_state({k: t.grad for k, t in model.named_parameters()}, cfg, SIZE)
    grads = {hf.hub_name(name): t.grad for name, t in theirs.named_parameters() if hf.hub_name(name) not in hf.FIXED}
    assert grads.keys() == mine.keys() - set(hf.FIXED)
    largest = max(g.abs().max().item() for g in grads.values())
    for name, g in grads.items():
        close(g, mine[name], scale=1e-3 * largest)


def test_transformers_to_this_project_and_back_is_lossless(tmp_path):
    config = transformers.ViTMAEConfig(**hf.hf_config(CFG, SIZE, 0.6))
    torch.manual_seed(1)
    theirs = transformers.ViTMAEForPreTraining(config)
    model = MaskedAutoencoderViT(CFG, SIZE)
    with torch.no_grad():
        for t in theirs.parameters():
            t.add_(0.1 * torch.randn_like(t))
        # transformers 5.24 leaves a fresh model's position tables at 0 (from_pretrained loads them); MAE's are
        # the ones test_model.py checks against MAE's formula
        theirs.vit.embeddings.position_embeddings.copy_(model.encoder.pos_embed)
        theirs.decoder.decoder_pos_embed.copy_(model.decoder_pos_embed)
    theirs.save_pretrained(tmp_path / "theirs")  # transformers' own writing and names, its position tables

    assert "encoder and decoder" in hf.init_from(model, tmp_path / "theirs", CFG)
    back = transformers.ViTMAEForPreTraining.from_pretrained(export(model, tmp_path, mask_ratio=0.6))
    assert back.config.mask_ratio == 0.6
    before, after = theirs.state_dict(), back.state_dict()
    assert before.keys() == after.keys()
    for name, t in before.items():
        assert torch.equal(after[name], t) or (name in hf.FIXED and torch.allclose(after[name], t, atol=1e-6)), name
    # this project's own checkpoint, read with its digest checked
    loaded = hf.init_from(ViTEncoder(CFG, SIZE), tmp_path / "checkpoint.pt", CFG)
    assert loaded.startswith("encoder from this project's")


def test_an_encoder_saved_by_transformers_alone_loads_as_the_encoder(tmp_path):
    theirs = random_transformers_mae().vit  # ViTMAEModel: saved without the `vit.` prefix, no decoder
    theirs.config.mask_ratio = 0.0
    theirs.save_pretrained(tmp_path / "encoder")
    encoder = ViTEncoder(CFG, SIZE)
    assert hf.init_from(encoder, tmp_path / "encoder", CFG).startswith("encoder from transformers")
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = theirs(pixel_values=images, noise=torch.arange(float(GRID)).expand(2, -1)).last_hidden_state
        close(encoder(encoder.embed(images)), expected)
    assert "(decoder kept)" in hf.init_from(MaskedAutoencoderViT(CFG, SIZE), tmp_path / "encoder", CFG)


def mae_state_dict(theirs, cfg: ModelConfig = CFG) -> dict:
    """transformers' weights under facebookresearch/mae's names (models_mae.py: fused qkv, `mlp.fc1`), written
    out here by hand as MAE's `convert_vit_mae_to_pytorch` reads them, independently of hf.py's tables."""
    hub = {hf.hub_name(k): t.detach().clone() for k, t in theirs.state_dict().items()}
    mae = {
        "cls_token": hub["vit.embeddings.cls_token"],
        "pos_embed": hub["vit.embeddings.position_embeddings"],
        "mask_token": hub["decoder.mask_token"],
        "decoder_pos_embed": hub["decoder.decoder_pos_embed"],
    }
    for k in ("weight", "bias"):
        mae[f"patch_embed.proj.{k}"] = hub[f"vit.embeddings.patch_embeddings.projection.{k}"]
        mae[f"norm.{k}"] = hub[f"vit.layernorm.{k}"]
        for m in ("embed", "norm", "pred"):
            mae[f"decoder_{m}.{k}"] = hub[f"decoder.decoder_{m}.{k}"]
        for blocks, layers, depth in (
            ("blocks", "vit.encoder.layer", cfg.encoder_depth),
            ("decoder_blocks", "decoder.decoder_layers", cfg.decoder_depth),
        ):
            for i in range(depth):
                src = f"{layers}.{i}"
                mae[f"{blocks}.{i}.attn.qkv.{k}"] = torch.cat(
                    [hub[f"{src}.attention.attention.{q}.{k}"] for q in ("query", "key", "value")]
                )
                mae[f"{blocks}.{i}.attn.proj.{k}"] = hub[f"{src}.attention.output.dense.{k}"]
                mae[f"{blocks}.{i}.norm1.{k}"] = hub[f"{src}.layernorm_before.{k}"]
                mae[f"{blocks}.{i}.norm2.{k}"] = hub[f"{src}.layernorm_after.{k}"]
                mae[f"{blocks}.{i}.mlp.fc1.{k}"] = hub[f"{src}.intermediate.dense.{k}"]
                mae[f"{blocks}.{i}.mlp.fc2.{k}"] = hub[f"{src}.output.dense.{k}"]
    return mae


def random_transformers_mae(cfg: ModelConfig = CFG, size: int = SIZE, seed: int = 2):
    """A transformers ViTMAE at these sizes with every weight drawn, and MAE's position tables."""
    torch.manual_seed(seed)
    theirs = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(**hf.hf_config(cfg, size, 0.75)))
    reference = MaskedAutoencoderViT(cfg, size)
    with torch.no_grad():
        for t in theirs.parameters():
            t.add_(0.1 * torch.randn_like(t))
        theirs.vit.embeddings.position_embeddings.copy_(reference.encoder.pos_embed)
        theirs.decoder.decoder_pos_embed.copy_(reference.decoder_pos_embed)
    return theirs.eval()


def test_a_facebookresearch_mae_checkpoint_loads_as_the_model_it_is(tmp_path):
    import argparse

    theirs = random_transformers_mae()
    path = tmp_path / "mae_visualize.pth"
    torch.save({"model": mae_state_dict(theirs), "args": argparse.Namespace(model="mae_vit_tiny")}, path)
    model = MaskedAutoencoderViT(CFG, SIZE)
    assert hf.init_from(model, path, CFG).startswith("encoder and decoder from facebookresearch/mae")
    images, noise = torch.randn(2, 3, SIZE, SIZE), torch.rand(2, GRID)
    with torch.no_grad():
        recon = model(images, 0.75, noise)
        out = theirs(pixel_values=images, noise=noise)
    close(recon.pred, out.logits)
    close(recon.loss, out.loss)

    encoder_only = {k: v for k, v in mae_state_dict(theirs).items() if not k.startswith(("decoder", "mask_token"))}
    torch.save({"model": encoder_only}, path)  # as MAE's released mae_pretrain_vit_*.pth
    assert "(decoder kept)" in hf.init_from(MaskedAutoencoderViT(CFG, SIZE), path, CFG)


def test_a_mismatch_names_the_first_tensor_that_does_not_fit(tmp_path):
    folder = export(ours(), tmp_path)
    wider = CFG.model_copy(update={"encoder_dim": 64})
    with pytest.raises(hf.WeightsMismatch, match=r"encoder\.cls_token is \(1, 1, 32\) there but \(1, 1, 64\) here"):
        hf.init_from(MaskedAutoencoderViT(wider, SIZE), folder, wider)
    shallower = CFG.model_copy(update={"encoder_depth": 1})
    with pytest.raises(hf.WeightsMismatch, match=r"tensor vit\.encoder\.layer\.1\.\S+ .* has no place"):
        hf.init_from(ViTEncoder(shallower, SIZE), folder, shallower)
    deeper = CFG.model_copy(update={"decoder_depth": 3})
    with pytest.raises(hf.WeightsMismatch, match=r"no tensor for decoder_blocks\.2\.norm1\.weight"):
        hf.init_from(MaskedAutoencoderViT(deeper, SIZE), folder, deeper)

    # rows first, the layout MAE's and transformers' tables are not: the weights would mean something else
    mae = mae_state_dict(random_transformers_mae())
    half = CFG.encoder_dim // 2
    mae["pos_embed"] = torch.cat([mae["pos_embed"][..., half:], mae["pos_embed"][..., :half]], dim=-1)
    torch.save({"model": mae}, tmp_path / "swapped.pth")
    with pytest.raises(hf.WeightsMismatch, match="position table encoder.pos_embed is not MAE's"):
        hf.init_from(MaskedAutoencoderViT(CFG, SIZE), tmp_path / "swapped.pth", CFG)


# --------------------------------------------------------------------------- through the pipeline (configs/tiny.yaml)


@pytest.fixture(scope="module")
def exported(tiny_downloaded, tmp_path_factory):
    """A scratch repository after `dvc repro export@improved`: data, the improved pre-training, its export."""
    repo = copy_built(tiny_downloaded, tmp_path_factory.mktemp("hf") / "repo")
    dvc("repro", "export@improved", cwd=repo)
    return repo


@pytest.fixture(scope="module")
def downloaded(tiny_downloaded, tmp_path_factory):
    """A scratch repository after `dvc repro download`: the prepared data fine-tuning reads."""
    return copy_built(tiny_downloaded, tmp_path_factory.mktemp("hf_data") / "repo")


def transformers_features(folder, images: torch.Tensor) -> torch.Tensor:
    """What a user gets: every patch (mask_ratio 0) in order (noise = position), mean of the patch tokens."""
    encoder = transformers.ViTMAEModel.from_pretrained(folder, mask_ratio=0.0).eval()
    noise = torch.arange(encoder.config.image_size**2 // encoder.config.patch_size**2).float()
    with torch.no_grad():
        tokens = encoder(pixel_values=images, noise=noise.expand(len(images), -1)).last_hidden_state
    return tokens[:, 1:].mean(dim=1)


@pytest.mark.slow
def test_dvc_repro_leaves_a_folder_transformers_loads_as_this_encoder(exported):
    folder = exported / "models" / "improved" / "hf"
    lock = yaml.safe_load((exported / "dvc.lock").read_text())["stages"]["export@improved"]
    assert [o["path"] for o in lock["outs"]] == ["models/improved/hf"]  # a DVC out: `dvc push` shares it
    config = json.loads((folder / "config.json").read_text())
    assert (config["hidden_size"], config["layer_norm_eps"], config["mask_ratio"]) == (32, 1e-6, 0.75)
    _, info = transformers.ViTMAEForPreTraining.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]

    p = load_params(exported / "params.yaml")
    images = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        ours = load_encoder(exported / "models" / "improved" / "encoder.pt", p).eval().features(images, "mean")
    close(transformers_features(folder, images), ours)


@pytest.mark.parametrize("fmt", ["transformers", "facebookresearch/mae"])
def test_finetuning_starts_from_a_checkpoint_written_here(downloaded, tmp_path, monkeypatch, fmt):
    p = load_params(downloaded / "params.yaml")
    theirs = random_transformers_mae(p.model, p.data.input_size)
    theirs.save_pretrained(tmp_path / "theirs")
    if fmt == "transformers":
        path = tmp_path / "theirs"
    else:
        path = tmp_path / "mae.pth"
        torch.save({"model": mae_state_dict(theirs, p.model)}, path)
    images = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        start = hf.load_any_encoder(path, p).eval().features(images, "mean")  # what finetune builds on
    close(start, transformers_features(tmp_path / "theirs", images))

    monkeypatch.chdir(downloaded)
    summary = finetune(p, path, "data/prepared", "external", tmp_path / "live", tmp_path / "scratch")
    assert 0.0 <= summary["top1"] <= 1.0 and summary["epochs"] == 1


@pytest.mark.slow
def test_pretraining_starts_from_pretrain_init_from(exported):
    params = exported / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("init_from: null", "init_from: models/improved/hf"))
        proc = dvc("repro", "pretrain@original", cwd=exported)
        assert "pretrain original: encoder and decoder from transformers weights in models/improved/hf" in proc.stderr
        params.write_text(original.replace("init_from: null", "init_from: models/nowhere"))
        proc = dvc("repro", "pretrain@original", cwd=exported, check=False)
        assert proc.returncode != 0 and "models/nowhere: no such file or folder" in proc.stdout + proc.stderr
    finally:
        params.write_text(original)
