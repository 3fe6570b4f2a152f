"""The VQ image tokenizer: a VQGAN conv encoder/decoder (``vqgan.py``) around a vector-quantize-pytorch codebook.

PIL images of any mode and size <-> code grids of ``tokens_per_image`` codes in raster order. The conv nets keep
taming's names, so ``fusion.interop.taming`` loads Meta's, HF Chameleon's and taming checkpoints by renaming the
codebook alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from fusion import checkpoint_layout as layout
from fusion.files import first_present, load_tensors, read_json, save_tensors, write_json
from fusion.images import to_rgb
from fusion.numerics import refuse_nonfinite
from fusion.tokenizers.vq_config import VQConfig
from fusion.tokenizers.vqgan import Decoder, Encoder

CODEBOOK = "quantize._codebook.embed"  # the codebook [1, K, D] in our state dict
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)
_RANGE_SLACK = 1e-3  # pixel tensors may overshoot [-1, 1] by float rounding, not more
MOSTLY_DROPPED = 0.5  # a crop keeping less than this share of an image is worth a warning
log = logging.getLogger(__name__)


class ImageTokenizer(nn.Module):
    """PIL images <-> code grids. ``encode``/``decode`` are inference (no grad, eval); ``forward`` trains."""

    def __init__(self, cfg: VQConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.latent_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantize(
            dim=cfg.embed_dim, codebook_size=cfg.num_embeddings, codebook_dim=cfg.codebook_dim,
            decay=cfg.ema_decay, kmeans_init=cfg.kmeans_init, use_cosine_sim=cfg.use_cosine_sim,
            threshold_ema_dead_code=cfg.threshold_ema_dead_code, commitment_weight=cfg.commitment_weight,
            sync_codebook=False)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg) if cfg.decoder else None

    @property
    def grid(self) -> tuple[int, int]:
        return self.cfg.grid

    @property
    def tokens_per_image(self) -> int:
        return self.cfg.tokens_per_image

    @property
    def codebook_size(self) -> int:
        return self.cfg.num_embeddings

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    def _param(self) -> torch.Tensor:
        return self.quant_conv.weight

    # ---------------------------------------------------------------- pixels

    def prepare(self, image: PILImage.Image) -> PILImage.Image:
        """One PIL image of any mode/size -> RGB R x R by the config's ``resize`` policy (bicubic, antialiased):
        ``crop`` scales the shortest side to R and keeps the centre, ``pad`` scales the longest and pads with white."""
        if not isinstance(image, PILImage.Image):
            raise TypeError(f"expected a PIL image, got {type(image).__name__}")
        return _square(to_rgb(image), self.resolution, self.cfg.resize)

    def preprocess(self, images: Sequence[PILImage.Image]) -> torch.Tensor:
        """PIL images of any mode/size -> [B, 3, R, R] in [-1, 1] (``prepare`` each); a crop that drops most of an
        image is logged."""
        r = self.resolution
        out = np.empty((len(images), r, r, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            if not isinstance(image, PILImage.Image):
                raise TypeError(f"image {i} is a {type(image).__name__}, expected a PIL image")
            if kept_fraction(image.size, self.cfg.resize) < MOSTLY_DROPPED:
                log.warning("image %d (%dx%d): the centre crop keeps %.0f%% of it (resize='pad' keeps all)", i,
                            *image.size, 100 * kept_fraction(image.size, self.cfg.resize))
            out[i] = np.asarray(self.prepare(image))
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def _pixels(self, images: Sequence[PILImage.Image] | torch.Tensor) -> torch.Tensor:
        """Validated [B, 3, R, R] float pixels in [-1, 1], from PIL images or a tensor."""
        if not isinstance(images, torch.Tensor):
            return self.preprocess(list(images))
        r = self.resolution
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.cfg.in_channels, r, r):
            raise ValueError(f"pixel tensor must be [B, {self.cfg.in_channels}, {r}, {r}], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"pixel tensor must be floating point in [-1, 1], got {images.dtype}")
        if not torch.isfinite(images).all():
            raise ValueError("pixel tensor contains NaN or inf")
        if images.numel() and images.abs().max() > 1 + _RANGE_SLACK:
            raise ValueError(f"pixel values must lie in [-1, 1], got [{images.min():.3g}, {images.max():.3g}]")
        return images

    def check_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Validate a [B, h*w] integer code tensor; returns it as long."""
        if not isinstance(codes, torch.Tensor) or codes.dtype not in _INT_DTYPES:
            raise ValueError(f"codes must be an integer tensor, got {getattr(codes, 'dtype', type(codes))}")
        if codes.ndim != 2 or codes.shape[1] != self.tokens_per_image:
            raise ValueError(f"codes must be [B, {self.tokens_per_image}], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long()

    # ---------------------------------------------------------------- codes

    def _latents(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels -> pre-quantisation vectors [B, h*w, embed_dim]."""
        z = self.quant_conv(self.encoder(x))
        return z.flatten(2).transpose(1, 2)

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Vectors [..., embed_dim] -> code indices; the same arithmetic as HF Chameleon (ties: lowest index)."""
        q = self.quantize
        x = q.project_in(z).float()
        embed = q.codebook.float()
        if q.use_cosine_sim:
            return (F.normalize(x, dim=-1) @ embed.T).argmax(-1)
        flat = x.reshape(-1, x.shape[-1])
        dist = (flat**2).sum(1, keepdim=True) + (embed**2).sum(1) - 2 * torch.einsum("bd,dn->bn", flat, embed.T)
        return dist.argmin(1).view(x.shape[:-1])

    def encode(self, images: Sequence[PILImage.Image] | torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Images (PIL, any mode/size) or pixels [B, 3, R, R] in [-1, 1] -> codes LongTensor[B, h*w] on CPU."""
        x = self._pixels(images)
        if len(x) == 0:
            return torch.empty(0, self.tokens_per_image, dtype=torch.long)
        p = self._param()
        with _inference(self):
            return torch.cat([self.nearest_codes(self._latents(c.to(p.device, p.dtype))).cpu()
                              for c in x.split(batch_size)])

    def _decode_latents(self, quant: torch.Tensor) -> torch.Tensor:
        """Codebook vectors [B, h*w, embed_dim] -> pixels [B, 3, R, R] (unclamped)."""
        if self.decoder is None:
            raise RuntimeError("this image tokenizer has no decoder (HF Chameleon ships the VQ encoder only)")
        h, w = self.grid
        z = quant.transpose(1, 2).reshape(len(quant), -1, h, w)
        return self.decoder(self.post_quant_conv(z))

    def decode(self, codes: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Codes [B, h*w] -> pixels FloatTensor[B, 3, R, R] in [-1, 1] on CPU."""
        codes = self.check_codes(codes)
        r = self.resolution
        if len(codes) == 0:
            return torch.empty(0, self.cfg.out_channels, r, r)
        p = self._param()
        with _inference(self):
            return torch.cat([self._decode_latents(self.quantize.get_output_from_indices(c.to(p.device)).to(p.dtype))
                              .float().clamp(-1, 1).cpu() for c in codes.split(batch_size)])

    def decode_images(self, codes: torch.Tensor) -> list[PILImage.Image]:
        """Codes [B, h*w] -> RGB PIL images."""
        return to_pil(self.decode(codes))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training step: pixels -> (reconstruction, indices [B, h*w], commitment loss)."""
        quant, indices, commit = self.quantize(self._latents(x))
        return self._decode_latents(quant), indices, commit

    # ---------------------------------------------------------------- files

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the weights then the config into ``directory`` (each atomically)."""
        directory = Path(directory)
        save_tensors(directory / layout.VQ_WEIGHTS, self.state_dict())
        write_json(directory / layout.VQ_CONFIG, self.cfg.to_dict())
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device | None = None, *,
                        check_finite: bool = True) -> ImageTokenizer:
        """Read a folder written by ``save_pretrained`` (``fusion convert`` writes one too).

        ``check_finite`` refuses weights holding NaN / inf, naming the tensors.
        """
        config = first_present(directory, layout.VQ_CONFIG, layout.HF_VQ_CONFIG, what="image tokenizer")
        weights = config.with_name(layout.VQ_WEIGHTS if config.name == layout.VQ_CONFIG else layout.HF_VQ_WEIGHTS)
        state = load_tensors(weights)
        if check_finite:
            refuse_nonfinite(state, str(weights))
        if config.name == layout.VQ_CONFIG:
            model = cls(VQConfig.from_dict(read_json(config)))
            model.load_state_dict(state)
        else:
            model = cls._from_old_convert(state, read_json(config), directory)
        return model.to(device or "cpu").eval()

    @classmethod
    def _from_old_convert(cls, state: dict[str, torch.Tensor], hf_config: dict,
                          directory: str | os.PathLike) -> ImageTokenizer:
        """Deprecated, for one release: HF Chameleon's VQ as ``fusion convert`` once copied it (``hf_vq_config.json``
        + ``hf_vqmodel.safetensors``, a [K, D] codebook); it now writes fusion's own ``vq.json``."""
        warnings.warn(f"{directory}: the image tokenizer is HF Chameleon's VQ as an older `fusion convert` copied it "
                      f"({layout.HF_VQ_CONFIG}); fusion reads it for one more release. Re-save it as fusion's own: "
                      "ImageTokenizer.from_pretrained(folder).save_pretrained(folder)", DeprecationWarning,
                      stacklevel=3)
        state = dict(state)
        state.update(codebook_state(state.pop("quantize.embedding.weight")))  # HF's [K, D] codebook
        model = cls(VQConfig.from_hf(hf_config))
        model.load_state_dict(state)
        return model


def codebook_state(embed: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state-dict entries of our codebook for a plain [K, D] one (taming's, HF's): vector-quantize-pytorch's
    [1, K, D] embedding, with EMA statistics that start from it."""
    embed = embed.float()[None]
    return {CODEBOOK: embed, "quantize._codebook.embed_avg": embed.clone(),
            "quantize._codebook.cluster_size": torch.ones(embed.shape[:2]),
            "quantize._codebook.initted": torch.tensor(True)}


def kept_fraction(size: tuple[int, int], resize: str) -> float:
    """The share of an image's pixels that survive the ``resize`` policy (a centre crop keeps short / long)."""
    w, h = size
    return min(w, h) / max(w, h) if resize == "crop" else 1.0


def _square(image: PILImage.Image, r: int, resize: str) -> PILImage.Image:
    """RGB image -> r x r: ``crop`` scales the shortest side to ``r`` and centre-crops, ``pad`` scales the longest
    side to ``r`` and centres it on white (bicubic, antialiased when shrinking)."""
    w, h = image.size
    if (w, h) == (r, r):
        return image
    s = r / (min(w, h) if resize == "crop" else max(w, h))
    nw, nh = round(w * s), round(h * s)
    if resize == "crop":
        nw, nh = max(r, nw), max(r, nh)
        left, top = (nw - r) // 2, (nh - r) // 2
        return image.resize((nw, nh), PILImage.BICUBIC).crop((left, top, left + r, top + r))
    nw, nh = max(1, nw), max(1, nh)
    canvas = PILImage.new("RGB", (r, r), (255, 255, 255))
    canvas.paste(image.resize((nw, nh), PILImage.BICUBIC), ((r - nw) // 2, (r - nh) // 2))
    return canvas


def to_pil(pixels: torch.Tensor) -> list[PILImage.Image]:
    """[B, 3, R, R] in [-1, 1] -> RGB PIL images."""
    arr = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [PILImage.fromarray(a.permute(1, 2, 0).numpy(), "RGB") for a in arr]


@contextlib.contextmanager
def _inference(module: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for the block, then the previous mode back."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)

