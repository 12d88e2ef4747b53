"""Masked Autoencoder with a ViT backbone (He et al., CVPR 2022).

The encoder sees only the visible patches; a light decoder gets the encoded visible tokens plus a
learned mask token at every masked position, both with fixed 2D sin-cos positions, and predicts the
pixels of every patch. Methods follow the paper's order: patchify, random_masking, forward_encoder,
forward_decoder, forward_loss, as in facebookresearch/mae's models_mae.py. The model computes MAE and
its one loss, the masked-patch MSE; what a recipe adds to it (weights, extra terms, the mask-ratio
schedule) is recipes.py's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .plumbing.config import ModelConfig

# --------------------------------------------------------------------------- positions


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim) embedding: sin of dim/2 frequencies, then cos of the same."""
    assert dim % 2 == 0
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = True) -> torch.Tensor:
    """(grid*grid [+1], dim) fixed positions: the first half of the channels encodes the column, the second
    the row. That order is MAE's (`util/pos_embed.py`, "w goes first") and Hugging Face's, so weights mean
    the same thing here and there."""
    assert dim % 4 == 0, "2D sin-cos positions need a dimension divisible by 4"
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


# --------------------------------------------------------------------------- transformer


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # flash / memory-efficient kernels where available
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a residual branch for a random `rate` of the samples, rescale the rest."""
    if rate == 0.0 or not training:
        return x
    keep = torch.empty(x.shape[0], *([1] * (x.ndim - 1)), device=x.device, dtype=x.dtype).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


class Block(nn.Module):
    """Pre-norm transformer block; `drop_path` > 0 (fine-tuning) skips its branches at random."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, drop_path: float = 0.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


# --------------------------------------------------------------------------- the model


class ViTEncoder(nn.Module):
    """Patch embedding + [cls] token + fixed 2D sin-cos positions + transformer blocks.

    `drop_path` is the stochastic-depth rate of the last block, rising linearly from 0 at the first
    (as in MAE's fine-tuning); pre-training uses none."""

    def __init__(self, cfg: ModelConfig, image_size: int, in_chans: int = 3, drop_path: float = 0.0):
        super().__init__()
        self.grid = image_size // cfg.patch_size
        self.patch_embed = nn.Conv2d(in_chans, cfg.encoder_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.encoder_dim))
        self.register_buffer("pos_embed", sincos_2d(cfg.encoder_dim, self.grid)[None], persistent=False)
        depth = cfg.encoder_depth
        self.blocks = nn.ModuleList(
            Block(cfg.encoder_dim, cfg.encoder_heads, cfg.mlp_ratio, drop_path * i / max(1, depth - 1))
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(cfg.encoder_dim, eps=1e-6)

    def embed(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, D) patch tokens with their positions."""
        return self.patch_embed(imgs).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L', D) tokens (all patches or only the visible ones) -> (B, 1 + L', D), [cls] first."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def compile_blocks(self) -> None:
        """torch.compile each transformer block (where nearly all FLOPs are). Compiling blocks rather
        than the whole model keeps Python floats (the mask ratio) and generators out of the graphs; a
        changing visible-token count under curriculum masking recompiles once, then runs dynamic."""
        for blk in self.blocks:
            blk.compile()

    def features(self, imgs: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
        """All patches, no masking -> one vector per image: the mean of the patch tokens, or the [cls] token."""
        tokens = self(self.embed(imgs))
        return tokens[:, 1:].mean(dim=1) if pooling == "mean" else tokens[:, 0]


def visible_count(num_patches: int, mask_ratio: float) -> int:
    """How many patches random_masking keeps at `mask_ratio` (at least one)."""
    return max(1, int(num_patches * (1 - mask_ratio)))


class Reconstruction(NamedTuple):
    """What MaskedAutoencoderViT.forward returns (by name: a recipe reads `latent` too)."""

    loss: torch.Tensor  # the masked-patch MSE against the (normalised) target, fp32
    pred: torch.Tensor  # (B, L, p*p*C) predicted patches, in the target's space
    mask: torch.Tensor  # (B, L), 1 = masked
    latent: torch.Tensor  # (B, 1 + visible, D) encoder output, [cls] first


class MaskedAutoencoderViT(nn.Module):
    def __init__(self, cfg: ModelConfig, image_size: int, in_chans: int = 3):
        super().__init__()
        self.cfg = cfg
        self.image_size = image_size
        self.patch_size = p = cfg.patch_size
        self.grid = image_size // p
        self.num_patches = self.grid**2

        self.encoder = ViTEncoder(cfg, image_size, in_chans)

        # decoder
        self.decoder_embed = nn.Linear(cfg.encoder_dim, cfg.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(cfg.decoder_dim, self.grid)[None], persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(cfg.decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(cfg.decoder_dim, p * p * in_chans)

        self._init_weights()

    def _init_weights(self) -> None:
        # as in MAE: patch embedding like a linear layer, tokens N(0, 0.02), xavier linears
        w = self.encoder.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def compile_blocks(self) -> None:
        """torch.compile the encoder's and the decoder's transformer blocks (see ViTEncoder)."""
        self.encoder.compile_blocks()
        for blk in self.decoder_blocks:
            blk.compile()

    # ------------------------------------------------------------------ pixels <-> patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, pixels (row, col, channel)."""
        b, c, _, _ = imgs.shape
        p, g = self.patch_size, self.grid
        x = imgs.reshape(b, c, g, p, g, p)
        return torch.einsum("bchpwq->bhwpqc", x).reshape(b, g * g, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        p, g = self.patch_size, self.grid
        c = x.shape[-1] // (p * p)
        x = x.reshape(b, g, g, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, g * p, g * p)

    # ------------------------------------------------------------------ masking

    def random_masking(self, x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        """Keep a random (1 - mask_ratio) of the tokens of each sample.

        The tokens with the smallest noise are kept; passing the same `noise` gives the same masks,
        which is how the visualisation compares two models fairly.
        Returns the kept tokens, a binary mask (B, L) with 1 = masked, and the permutation that
        restores the original order.
        """
        b, n, d = x.shape
        keep = visible_count(n, mask_ratio)
        if noise is None:
            noise = torch.rand(b, n, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_kept = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, d))
        mask = torch.ones(b, n, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    # ------------------------------------------------------------------ encoder / decoder

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None):
        x, mask, ids_restore = self.random_masking(self.encoder.embed(imgs), mask_ratio, noise)
        return self.encoder(x), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        mask_tokens = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # visible tokens, then mask tokens
        x_ = torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    # ------------------------------------------------------------------ loss

    def target(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-patch target and the statistics that map a prediction back to pixels."""
        target = self.patchify(imgs)
        if not self.cfg.norm_pix_loss:
            return target, torch.zeros_like(target[..., :1]), torch.ones_like(target[..., :1])
        mean = target.mean(dim=-1, keepdim=True)
        std = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return (target - mean) / std, mean, std

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE on the masked patches against the target (per-patch normalised pixels with norm_pix_loss),
        in fp32 whatever autocast the forward ran under."""
        with torch.autocast(imgs.device.type, enabled=False):
            target, _, _ = self.target(imgs)
            per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
            return (per_patch * mask).sum() / mask.sum()

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Predicted patches -> image in the input's space (undoing the per-patch normalisation)."""
        _, mean, std = self.target(imgs)
        return self.unpatchify(pred.float() * std + mean)

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None
    ) -> Reconstruction:
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return Reconstruction(self.forward_loss(imgs, pred, mask), pred, mask, latent)
