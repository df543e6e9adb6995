"""The inference loop: the model held once per process, batches under ``torch.inference_mode``.

What the legacy loop paid for and this one does not: a DataLoader, ``no_grad`` instead of
inference mode, a profiler, and ``gc.collect()`` every batch. What this one adds, in every
precision (exact rewrites, within 1e-6 of the model): BatchNorm folded into the CNN's
convolutions, which run channels-last; the linear layers with no activation between them folded
into one (the ViT's ``head`` into its projection, each branch's last layer into the fusion
head); freed memory kept in the heap (:func:`keep_freed_memory`: without it every op's output
page-faults); and each batch cut into one single-threaded stream per CPU instead of one stream
of 2-thread ops (the ViT's many small ops scale badly across threads). The model passed in is
left untouched: the predictor keeps its own derived weights.

Precisions (``PRECISIONS``):

* ``fp32``: all float32.
* ``bf16-mlp``: the ViT blocks' MLPs (fc1, GELU, fc2: two thirds of the ViT's multiply-adds)
  and the CNN branch in bfloat16; attention, LayerNorm, the residual stream, the projections,
  the magnitude MLP and the head stay float32 (rounding those is what moved predictions).
* ``bf16``: every ViT block linear layer and the attention in bfloat16 too, plus the CNN.
* ``auto`` (default): ``bf16-mlp`` where the CPU has native bfloat16 (AVX512-BF16 or AMX,
  :func:`cpu_has_bf16`), else ``fp32``; a bf16 request on a CPU without it falls back to fp32.

Measured with ``bench/inference.py`` (2 vCPU AMD EPYC with avx512_bf16, batch 512, demo
checkpoint, 2556 samples, medians of 5 round-robin rounds; the legacy loop 487 samples/s):

=============  =========  =========  ===========  ==========  =======  =======
precision      samples/s  vs legacy  mean |diff|  max |diff|  MAE      NMAD
=============  =========  =========  ===========  ==========  =======  =======
legacy (fp32)     487       1.00x    --           --          0.03648  0.03584
fp32              742       1.52x    0.00000      0.00000     0.03648  0.03584
bf16-mlp         1067       2.18x    0.00049      0.00224     0.03646  0.03597
bf16             1282       2.63x    0.00329      0.00594     0.03663  0.03582
=============  =========  =========  ===========  ==========  =======  =======

``bf16-mlp`` is the default because it is the fastest setting that keeps the rule for a faster
default: mean |diff| from fp32 under 1e-3, MAE and NMAD equal to three decimals (0.036, 0.036).
``bf16`` breaks both (0.0033; MAE 0.037). The bound is checked on the demo checkpoint, whose
image branches are at their seeded initialisation: on untrained seeded models the ``bf16-mlp``
difference ranged 0.0003-0.0015, so a new checkpoint should be run through the bench (or pinned
to ``fp32`` with ``COSMIC_WORKER_PRECISION``) before relying on the default.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.logs import event
from services.worker import settings as worker_settings
from services.worker.engines import available_threads, cpu_has_bf16
from services.worker.model import HEADS, WIDTH, RedshiftModel

log = logging.getLogger("cosmic.worker.inference")
#: ``auto`` resolves to ``bf16-mlp`` on a CPU with native bfloat16, else to ``fp32``.
PRECISIONS = ("auto", "fp32", "bf16-mlp", "bf16")
DEFAULT_PRECISION = "auto"
_BF16_PRECISIONS = ("bf16-mlp", "bf16")


#: glibc ``mallopt`` parameters and the values set (see :func:`keep_freed_memory`).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_TRIM_THRESHOLD = 1 << 30
_malloc_tuned = False


def keep_freed_memory() -> bool:
    """Keep freed tensor memory in the process's heap instead of returning it to the kernel.

    glibc serves large allocations (a batch's activations: 5-27 MB each) with fresh ``mmap``
    pages and unmaps them on free, so every op of every batch pays page faults on its output.
    No mmap for allocations (heap only) and a 1 GB trim threshold make the second batch reuse
    the first one's memory: fp32 went from ~600 to ~700 samples/s, bf16-mlp from ~890 to ~950
    (one stream). Resident memory stays at its peak instead of shrinking between batches.
    Process-wide, once, glibc only (no-op elsewhere); ``COSMIC_WORKER_MALLOC_TUNE=0`` turns it off.
    """
    global _malloc_tuned
    if _malloc_tuned or not worker_settings.load().malloc_tune or not sys.platform.startswith("linux"):
        return _malloc_tuned
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    _malloc_tuned = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _malloc_tuned


def resolve_precision(precision: str) -> str:
    """The precision a :class:`Predictor` will run: ``auto`` decided, bf16 modes only on native bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    native = cpu_has_bf16()
    if precision == "auto":
        return "bf16-mlp" if native else "fp32"
    if precision in _BF16_PRECISIONS and not native:
        event(log, "bf16_unavailable", logging.WARNING, requested=precision, fallback="fp32")
        return "fp32"
    return precision


def fold_batchnorm(features: nn.Module) -> nn.Module:
    """A copy of a Conv-BatchNorm-ReLU stack with each BatchNorm folded into its convolution (eval only)."""
    folded = copy.deepcopy(features).eval()
    for module in list(folded.modules()):
        for name, child in list(module.named_children()):
            if (isinstance(child, nn.Sequential) and len(child) == 3 and isinstance(child[0], nn.Conv2d)
                    and isinstance(child[1], nn.BatchNorm2d)):
                conv = nn.utils.fusion.fuse_conv_bn_eval(child[0], child[1])
                setattr(module, name, nn.Sequential(conv, nn.ReLU(inplace=True)))
    return folded


def _fold_linear_chain(outer_weight: torch.Tensor, outer_bias: torch.Tensor | None,
                       inner: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``outer(inner(x))`` as one affine map (no activation between them), folded in float64."""
    w_out = outer_weight.detach().double()
    weight = w_out @ inner.weight.detach().double()
    bias = w_out @ inner.bias.detach().double()
    if outer_bias is not None:
        bias = bias + outer_bias.detach().double()
    return weight, bias


class _Prepared:
    """The model's weights laid out for inference, derived once (the model itself is left as it is).

    Exact rewrites, done in every precision: BatchNorm folded into the CNN's convolutions; the
    linear layers with no activation between them folded into one (the ViT's ``head`` into the
    first layer of its projection; the last layer of each branch into the fusion head's slice of
    the concatenation, so the head reads the branches' hidden activations directly).
    """

    def __init__(self, model: RedshiftModel, precision: str) -> None:
        vit, cnn, mags, head = model.vit, model.cnn, model.magnitudes, model.head
        mlp_dtype = torch.bfloat16 if precision in _BF16_PRECISIONS else torch.float32
        attn_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.mlp_dtype, self.attn_dtype = mlp_dtype, attn_dtype

        def take(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return t.detach().to(dtype).contiguous()

        self.patch_weight, self.patch_bias = take(vit.patch_embed.proj.weight), take(vit.patch_embed.proj.bias)
        self.pos = take(vit.pos_embed[:, 1:])
        self.cls = take(vit.cls_token + vit.pos_embed[:, :1])
        self.blocks = [
            (take(b.norm1.weight), take(b.norm1.bias),
             take(b.attn.qkv.weight, attn_dtype), take(b.attn.qkv.bias, attn_dtype),
             take(b.attn.proj.weight, attn_dtype), take(b.attn.proj.bias, attn_dtype),
             take(b.norm2.weight), take(b.norm2.bias),
             take(b.mlp.fc1.weight, mlp_dtype), take(b.mlp.fc1.bias, mlp_dtype),
             take(b.mlp.fc2.weight, mlp_dtype), take(b.mlp.fc2.bias, mlp_dtype))
            for b in vit.blocks]
        self.fc_norm = (take(vit.fc_norm.weight), take(vit.fc_norm.bias), vit.fc_norm.eps)
        weight, bias = _fold_linear_chain(vit.proj[0].weight, vit.proj[0].bias, vit.head)
        self.vit_proj = (weight.float(), bias.float())

        self.cnn_dtype = mlp_dtype
        self.cnn = fold_batchnorm(cnn.features).to(dtype=self.cnn_dtype, memory_format=torch.channels_last)
        self.cnn_proj = (take(cnn.proj[0].weight, self.cnn_dtype), take(cnn.proj[0].bias, self.cnn_dtype))

        self.mags = [(take(layer.weight), take(layer.bias)) for layer in mags if isinstance(layer, nn.Linear)][:-1]
        # head[0] reads cat(vit.proj[2](v), cnn.proj[2](c), mags[-1](m)): fold those three layers in.
        first = head[0]
        widths = [vit.proj[2].out_features, cnn.proj[2].out_features, mags[-1].out_features]
        slices = torch.split(first.weight.detach(), widths, dim=1)
        inners = (vit.proj[2], cnn.proj[2], mags[-1])
        parts = [_fold_linear_chain(w, None, inner) for w, inner in zip(slices, inners, strict=True)]
        weight = torch.cat([w for w, _ in parts], dim=1)
        bias = sum(b for _, b in parts) + first.bias.detach().double()
        self.head0 = (weight.float().contiguous(), bias.float())
        self.head1 = (take(head[2].weight), take(head[2].bias))


class Predictor:
    """Redshifts for batches of images and magnitudes, from one loaded model."""

    engine = "torch"

    def __init__(self, model: RedshiftModel, precision: str = DEFAULT_PRECISION, threads: int | None = None,
                 streams: int | None = None) -> None:
        self.precision = resolve_precision(precision)
        self.threads = threads or available_threads()
        #: Batches are cut into ``streams`` pieces run side by side, each op single-threaded; with
        #: one stream, each op uses all ``threads`` (intra-op). Default: one stream per thread.
        self.streams = max(1, min(streams or self.threads, self.threads))
        self._intra_op_threads = 1 if self.streams > 1 else self.threads
        keep_freed_memory()
        torch.set_num_threads(self._intra_op_threads)
        self._pool = ThreadPoolExecutor(self.streams, "predict") if self.streams > 1 else None
        # the model is not kept: its weights live on in _Prepared, laid out for inference, and a
        # reference here would hold every tensor _Prepared does not share in memory for nothing
        with torch.inference_mode():
            self._prepared = _Prepared(model.eval(), self.precision)

    def predict(self, images: np.ndarray | torch.Tensor, magnitudes: np.ndarray | torch.Tensor, batch_size: int = 512,
                after_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """Predicted redshifts, float32 ``[n]``, from arrays (a partition's, shared without a copy) or tensors.

        ``after_batch(samples_done)`` runs after every batch, in the caller's thread: the one
        place a rank checks for cancel (it may raise to stop; no stream keeps working after it).
        """
        images, magnitudes = torch.as_tensor(images), torch.as_tensor(magnitudes)
        out = np.empty(images.shape[0], dtype=np.float32)
        step = -(-batch_size // self.streams)
        if torch.get_num_threads() != self._intra_op_threads:  # process-wide: someone else may have set it
            torch.set_num_threads(self._intra_op_threads)

        def run(span: tuple[int, int]) -> None:
            start, stop = span
            with torch.inference_mode():  # thread-local: entered in the stream's own thread
                out[start:stop] = self._forward(images[start:stop], magnitudes[start:stop]).reshape(-1).numpy()

        total = images.shape[0]
        for batch_start in range(0, total, batch_size):  # a batch's slices run side by side, one per stream
            batch_stop = min(batch_start + batch_size, total)
            spans = [(start, min(start + step, batch_stop)) for start in range(batch_start, batch_stop, step)]
            if self._pool is None:
                for span in spans:
                    run(span)
            else:
                for _ in self._pool.map(run, spans):  # re-raises a stream's error here
                    pass
            if after_batch is not None:
                after_batch(batch_stop)
        return out

    def _forward(self, images: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
        p = self._prepared
        images = images.float()
        features = torch.cat([self._vit(images), self._cnn(images), self._magnitudes(magnitudes)], dim=1)
        hidden = F.linear(features, *p.head0).relu_()
        return F.linear(hidden, *p.head1)

    def _vit(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT branch up to its projection's hidden ReLU (its last layer is folded into the head)."""
        p = self._prepared
        batch = images.shape[0]
        patches = F.conv2d(images, p.patch_weight, p.patch_bias, stride=p.patch_weight.shape[-1])
        x = torch.cat([p.cls.expand(batch, -1, -1), patches.flatten(2).transpose(1, 2) + p.pos], dim=1)
        tokens = x.shape[1]
        for ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b in p.blocks:
            h = F.layer_norm(x, (WIDTH,), ln1_w, ln1_b, 1e-6).to(p.attn_dtype)
            q, k, v = F.linear(h, qkv_w, qkv_b).view(batch, tokens, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, WIDTH)
            x = x + F.linear(a, proj_w, proj_b)
            h = F.layer_norm(x, (WIDTH,), ln2_w, ln2_b, 1e-6).to(p.mlp_dtype)
            x = x + F.linear(F.gelu(F.linear(h, fc1_w, fc1_b)), fc2_w, fc2_b)
        pooled = F.layer_norm(x[:, 1:].mean(dim=1), (WIDTH,), *p.fc_norm[:2], p.fc_norm[2])
        return F.linear(pooled, *p.vit_proj).relu_()

    def _cnn(self, images: torch.Tensor) -> torch.Tensor:
        p = self._prepared
        maps = p.cnn(images.to(dtype=p.cnn_dtype, memory_format=torch.channels_last))
        return F.linear(maps.flatten(1), *p.cnn_proj).relu_().float()

    def _magnitudes(self, magnitudes: torch.Tensor) -> torch.Tensor:
        h = magnitudes.float()
        for weight, bias in self._prepared.mags:
            h = F.linear(h, weight, bias).relu_()
        return h
