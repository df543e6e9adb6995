"""The redshift model: AstroMAE's fine-tuned network, written as plain ``nn.Module`` s.

``forward([images, magnitudes]) -> [B, 1]``: images ``[B, 5, 32, 32]`` (SDSS u, g, r, i, z),
magnitudes ``[B, 5]``. Three branches meet in a fusion head (about 15.9 M parameters in all):

* ViT: the MAE encoder (32 px, patch 8 -> 16 patches, width 192, depth 12, 3 heads, MLP ratio 4),
  mean of the patch tokens (not the class token), LayerNorm(eps 1e-6), Linear(192, 192), then
  Linear(192, 1096)-ReLU-Linear(1096, 1096). Parameter names follow timm's VisionTransformer
  (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``fc_norm``, ``head``) so that converted legacy
  checkpoints map onto them.
* Inception CNN: a plain Conv1x1 5->32 (no BatchNorm, no ReLU) and pool (16 px), Inception
  32->64 and 64->64 and pool (8 px), 64->32 and 32->32 and pool (4 px), a 3-branch Inception
  32->12 (1x1, 1x1-3x3 and the pooled 1x1: the original builds a 5x5 branch there but never
  runs it), flatten 12x4x4 = 192, then Linear(192, 1096)-ReLU-Linear(1096, 1096). Every conv
  block inside the Inceptions is Conv(with bias)-BatchNorm-ReLU. These three details are the
  public AstroMAE source's (``blocks/photoz.py``), where it differs from the summary in
  shared/LEGACY.md; without them a converted checkpoint would not load.
* Magnitudes: Linear(5, 1024) then 4 x [ReLU, Linear(1024, 1024)].
* Head: concat 1096 + 1096 + 1024 = 3216 -> Linear(3216, 1024)-ReLU-Linear(1024, 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

IMAGE_SIZE, PATCH, CHANNELS, WIDTH, DEPTH, HEADS = 32, 8, 5, 192, 12, 3
BRANCH_OUT, MAG_WIDTH = 1096, 1024


def _sincos_position_embedding(tokens_per_side: int, width: int) -> torch.Tensor:
    """MAE's fixed 2-D sine-cosine position embedding, with a zero row for the class token."""
    coords = torch.arange(tokens_per_side, dtype=torch.float64)
    grid_h, grid_w = torch.meshgrid(coords, coords, indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))

    def embed(positions: torch.Tensor) -> torch.Tensor:
        angles = positions.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([embed(grid_h), embed(grid_w)], dim=1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), table]).float().unsqueeze(0)


class PatchEmbed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(CHANNELS, WIDTH, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, WIDTH * 3)
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, WIDTH))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, WIDTH * 4)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(WIDTH * 4, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(WIDTH, eps=1e-6)
        self.mlp = Mlp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitBranch(nn.Module):
    """MAE encoder, mean-pooled over patch tokens, then the branch's projection to 1096."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        side = IMAGE_SIZE // PATCH
        self.pos_embed = nn.Parameter(_sincos_position_embedding(side, WIDTH), requires_grad=False)
        self.blocks = nn.Sequential(*(Block() for _ in range(DEPTH)))
        self.fc_norm = nn.LayerNorm(WIDTH, eps=1e-6)
        self.head = nn.Linear(WIDTH, WIDTH)
        self.proj = nn.Sequential(nn.Linear(WIDTH, BRANCH_OUT), nn.ReLU(), nn.Linear(BRANCH_OUT, BRANCH_OUT))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The transformer's tokens (class token first): the costly part, where precision matters."""
        patches = self.patch_embed(images) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(images.shape[0], -1, -1)
        return self.blocks(torch.cat([cls, patches], dim=1))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean of the patch tokens, normalised and projected to the branch's 1096 features."""
        return self.proj(self.head(self.fc_norm(tokens[:, 1:].float().mean(dim=1))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.encode(images))


def conv_block(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Inception(nn.Module):
    """Parallel 1x1, 1x1-3x3, 1x1-5x5 and pooled 1x1 convolutions, concatenated; the 3-branch form
    (the last block) has no 5x5 branch."""

    def __init__(self, cin: int, cout: int, branches: int = 4) -> None:
        super().__init__()
        width = cout // branches
        self.b1 = conv_block(cin, cout - width * (branches - 1), 1)
        self.b3 = nn.Sequential(conv_block(cin, width, 1), conv_block(width, width, 3))
        self.b5 = nn.Sequential(conv_block(cin, width, 1), conv_block(width, width, 5)) if branches == 4 else None
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv_block(cin, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.b1(x), self.b3(x)]
        if self.b5 is not None:
            parts.append(self.b5(x))
        parts.append(self.pool(x))
        return torch.cat(parts, dim=1)


class InceptionBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(CHANNELS, 32, 1), nn.AvgPool2d(2),                   # 16 px
            Inception(32, 64), Inception(64, 64), nn.AvgPool2d(2),        # 8 px
            Inception(64, 32), Inception(32, 32), nn.AvgPool2d(2),        # 4 px
            Inception(32, 12, branches=3),
        )
        self.proj = nn.Sequential(nn.Linear(12 * 4 * 4, BRANCH_OUT), nn.ReLU(), nn.Linear(BRANCH_OUT, BRANCH_OUT))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.features(images).flatten(1))


class RedshiftModel(nn.Module):
    """``forward([images, magnitudes]) -> [B, 1]`` redshift, as the legacy model is called."""

    def __init__(self) -> None:
        super().__init__()
        self.vit = VitBranch()
        self.cnn = InceptionBranch()
        layers: list[nn.Module] = [nn.Linear(CHANNELS, MAG_WIDTH)]
        for _ in range(4):
            layers += [nn.ReLU(), nn.Linear(MAG_WIDTH, MAG_WIDTH)]
        self.magnitudes = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(2 * BRANCH_OUT + MAG_WIDTH, 1024), nn.ReLU(), nn.Linear(1024, 1))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=1 / math.sqrt(module.in_features))
                nn.init.zeros_(module.bias)

    def forward(self, inputs: list[torch.Tensor] | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, magnitudes = inputs
        features = [self.vit(images), self.cnn(images), self.magnitudes(magnitudes.to(images.dtype))]
        return self.head(torch.cat(features, dim=1))


def parameter_count(model: nn.Module) -> int:
    """Parameters of the model, the fixed position embedding included (it is in the state_dict too)."""
    return sum(p.numel() for p in model.parameters())
