"""SiT (Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable
Interpolant Transformers"), the DiT architecture of Peebles & Xie (2023) trained as a linear-schedule
flow, written here from the two papers so that the released checkpoints load strictly.

Architecture (DiT §3.2): the latent (C, H, W) is cut into p x p patches, each linearly embedded
(``x_embedder.proj``, a stride-p convolution) plus a fixed 2D sine-cosine position embedding
(``pos_embed``, a non-trainable parameter); the conditioning c = t_emb + y_emb is the sum of a
sinusoidal time embedding passed through a two-layer MLP (``t_embedder.mlp.0``, ``.2``) and a class
embedding table with one extra row, the null class at index ``num_classes``, for classifier-free
guidance (``y_embedder.embedding_table``).  N adaLN-Zero blocks follow: from c, ``adaLN_modulation``
gives shift, scale and gate for the attention and the MLP branches (x + gate * branch(LN(x) (1 + scale)
+ shift)); the final layer modulates once more and projects each token back to p x p x C_out
(``final_layer``).  With ``learn_sigma`` C_out = 2 C (DiT's learned variance, kept in SiT's checkpoints);
the velocity is the first C channels (:func:`lazyflow.runtime.models.adapters.from_sit`).

Time: SiT's t runs from noise (0) to data (1) and its output is the velocity: lazyflow's convention,
source schedule ``linear``.  Sizes (depth, width, heads): S (12, 384, 6), B (12, 768, 12),
L (24, 1024, 16), XL (28, 1152, 16); patch 2, 4 or 8: kinds ``sit-s/2`` ... ``sit-xl/8``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...atomic_write import atomic_path
from ...errors import LazyflowError

__all__ = ["SiT", "SIZES", "KINDS", "sit_config", "build_sit", "load_sit", "save_sit", "read_state_dict"]

#: size -> (depth, hidden width, attention heads)
SIZES = {"s": (12, 384, 6), "b": (12, 768, 12), "l": (24, 1024, 16), "xl": (28, 1152, 16)}
PATCHES = (2, 4, 8)
KINDS = tuple(f"sit-{size}/{p}" for size in SIZES for p in PATCHES)
FREQUENCY_DIM = 256


def sit_config(kind: str, **overrides: Any) -> dict[str, Any]:
    """The constructor arguments of a named SiT (``sit-xl/2``; case and ``SiT-XL-2`` spelling accepted),
    with the released checkpoints' defaults (256 px: input 32, 4 channels, 1000 classes, learn_sigma)."""
    match = re.fullmatch(r"sit[-_]?(s|b|l|xl)[-/_]?(\d+)", str(kind).strip().lower())
    if not match or int(match.group(2)) not in PATCHES:
        raise LazyflowError(f"unknown SiT kind {kind!r}; choose one of {', '.join(KINDS)}")
    depth, hidden, heads = SIZES[match.group(1)]
    config = {"input_size": 32, "patch_size": int(match.group(2)), "in_channels": 4, "hidden_size": hidden,
              "depth": depth, "num_heads": heads, "mlp_ratio": 4.0, "num_classes": 1000, "learn_sigma": True}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise LazyflowError(f"unknown SiT settings {unknown}; settable: {', '.join(config)}")
    config.update(overrides)
    return config


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: torch.Tensor, dim: int = FREQUENCY_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t: [cos(t w_i), sin(t w_i)] with w_i = max_period^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=positions.device) / (dim / 2))
    out = positions.reshape(-1)[:, None].double() * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: int, device: torch.device | None = None) -> torch.Tensor:
    """The fixed (grid * grid, dim) position embedding of MAE/DiT: half the features encode the column,
    half the row of each patch (row-major patch order)."""
    coords = torch.arange(grid, dtype=torch.float64, device=device)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1).float()


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, in_channels: int, hidden: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_DIM, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embeddings; row ``num_classes`` is the null class of classifier-free guidance."""

    def __init__(self, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, hidden)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=True)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner)
        self.fc2 = nn.Linear(inner, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiTBlock(nn.Module):
    """adaLN-Zero transformer block: shift/scale/gate of both branches regressed from c."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1.unsqueeze(1) * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SiT(nn.Module):
    """A SiT/DiT transformer; ``forward(x, t, y)`` with x (n, C, H, W), t (n,) in [0, 1] (noise to data)
    and class labels y (n,) (``num_classes`` is the null class) returns (n, C_out, H, W): the velocity,
    followed by DiT's variance channels when ``learn_sigma``."""

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, num_classes: int = 1000,
                 learn_sigma: bool = True):
        super().__init__()
        if input_size % patch_size or hidden_size % num_heads or hidden_size % 4:
            raise LazyflowError(f"SiT: input_size {input_size} must be a multiple of patch_size {patch_size}, and "
                                f"hidden_size {hidden_size} of num_heads {num_heads} and of 4")
        self.config = {"input_size": input_size, "patch_size": patch_size, "in_channels": in_channels,
                       "hidden_size": hidden_size, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio,
                       "num_classes": num_classes, "learn_sigma": learn_sigma}
        self.in_channels, self.patch_size, self.num_classes = in_channels, patch_size, num_classes
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.data_shape = (in_channels, input_size, input_size)
        self.grid = input_size // patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(SiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier-uniform linear layers, N(0, 0.02) class and time embeddings, the
        patch projection as a linear layer, the fixed sine-cosine positions, and adaLN-Zero (every
        modulation and the output projection start at zero, so each block starts as the identity)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid, self.pos_embed.device).unsqueeze(0))
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in [*self.blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(n, T, p * p * C) -> (n, C, H, W)."""
        p, c, g = self.patch_size, self.out_channels, self.grid
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y.long())
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))


def build_sit(kind: str, **overrides: Any) -> SiT:
    """A randomly initialised SiT of a named kind (see :func:`sit_config`)."""
    return SiT(**sit_config(kind, **overrides))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A SiT state dict from an official ``.pt`` (a plain state dict, or one under ``ema`` or ``model``;
    read with ``weights_only=True``, never unpickling code) or a ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise LazyflowError(f"no SiT checkpoint at {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in (".pt", ".pth", ".ckpt", ".bin"):
        raise LazyflowError(f"{path}: a SiT checkpoint is a .pt (state dict) or .safetensors file")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # an unpickling refusal or a damaged file
        raise LazyflowError(f"{path}: cannot read a state dict with weights_only=True "
                            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if isinstance(state, dict):
        for key in ("ema", "model", "state_dict"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LazyflowError(f"{path}: not a state dict of tensors")
    return state


def load_sit(path: str | Path, kind: str, **overrides: Any) -> SiT:
    """A SiT of ``kind`` with the checkpoint's weights, loaded strictly.  The input size, class count
    and ``learn_sigma`` are read from the checkpoint (pos_embed, the class table, the output layer)
    unless given."""
    state = read_state_dict(path)
    config = sit_config(kind)
    try:
        patch, channels = config["patch_size"], config["in_channels"]
        if "pos_embed" in state and "input_size" not in overrides:
            overrides["input_size"] = int(round(math.sqrt(state["pos_embed"].shape[1]))) * patch
        if "y_embedder.embedding_table.weight" in state and "num_classes" not in overrides:
            overrides["num_classes"] = state["y_embedder.embedding_table.weight"].shape[0] - 1
        if "x_embedder.proj.weight" in state and "in_channels" not in overrides:
            channels = overrides["in_channels"] = state["x_embedder.proj.weight"].shape[1]
        if "final_layer.linear.weight" in state and "learn_sigma" not in overrides:
            overrides["learn_sigma"] = state["final_layer.linear.weight"].shape[0] == patch * patch * 2 * channels
    except (IndexError, AttributeError):
        raise LazyflowError(f"{path}: the checkpoint's tensors do not have SiT's shapes") from None
    model = SiT(**sit_config(kind, **overrides))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()
        raise LazyflowError(f"{path}: not a {kind} checkpoint ({' '.join(line.strip() for line in first[:3])[:400]})") \
            from None
    return model.eval()


def save_sit(model: SiT, path: str | Path) -> Path:
    """Write the state dict (official key names) as ``.pt`` or ``.safetensors``, atomically."""
    path = Path(path)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as temporary:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(temporary))
        else:
            torch.save(state, str(temporary))
    return path


#: SD-VAE latent scale of the released SiT/DiT models: latents = scale * (VAE encoder mean)
VAE_SCALE = 0.18215


def decode_latents(latents: torch.Tensor, vae_path: str | Path, *, scale: float = VAE_SCALE,
                   device: torch.device | str | None = None, batch_size: int = 8) -> torch.Tensor:
    """Images (n, H, W, 3) uint8 from SiT latents with a diffusers ``AutoencoderKL`` saved in a local
    folder (``from_pretrained(vae_path)``; nothing is downloaded): decode(latents / scale)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise LazyflowError("decoding latents needs diffusers: pip install 'lazyflow[peers]'") from None
    if not Path(vae_path).is_dir():
        raise LazyflowError(f"--vae {str(vae_path)!r} is not a folder holding a diffusers AutoencoderKL "
                            "(config.json and weights, as save_pretrained writes them)")
    try:
        vae = AutoencoderKL.from_pretrained(str(vae_path), local_files_only=True).to(device or "cpu").eval()
    except (OSError, ValueError) as err:
        raise LazyflowError(f"--vae {str(vae_path)!r}: cannot load an AutoencoderKL ({str(err).splitlines()[0]})") \
            from None
    dtype = next(vae.parameters()).dtype
    images = []
    with torch.no_grad():
        for start in range(0, latents.shape[0], batch_size):
            z = latents[start:start + batch_size].to(device=vae.device, dtype=dtype) / scale
            x = vae.decode(z).sample.float().clamp(-1, 1)
            images.append(((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu())
    return torch.cat(images)


def save_image_grid(images: torch.Tensor, path: str | Path, columns: int | None = None) -> Path:
    """Write uint8 images (n, H, W, 3) as one PNG grid."""
    from PIL import Image

    n, h, w, _ = images.shape
    columns = columns or min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / columns)
    canvas = torch.zeros((rows * h, columns * w, 3), dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i]
    path = Path(path)
    with atomic_path(path) as temporary:
        Image.fromarray(canvas.numpy()).save(temporary, format="PNG")
    return path


def class_labels(text: str, n: int, num_classes: int) -> torch.Tensor:
    """``"1,2,3"`` as n labels, repeated in order (sample i gets label i mod len); each in [0, num_classes]
    (``num_classes`` is the null class: unconditional samples)."""
    try:
        labels = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise LazyflowError(f"--class-labels: cannot read {text!r} as comma-separated integers") from None
    if not labels:
        raise LazyflowError("--class-labels needs at least one label")
    bad = [v for v in labels if not 0 <= v <= num_classes]
    if bad:
        raise LazyflowError(f"--class-labels {bad} out of range: labels are 0..{num_classes - 1} "
                            f"({num_classes} is the null class)")
    return torch.tensor([labels[i % len(labels)] for i in range(n)], dtype=torch.long)
