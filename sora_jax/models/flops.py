"""Model FLOPs of the DiT: the one count that training logs, AOT reports and benchmarks share.

  fl = dit_flops(config.model, tokens=21 * 45 * 80, batch=16, text_length=512, train=True)
  fl.model, fl.attention        # MFU counts model + attention (fl.mfu_flops)
  fl.executed                   # what runs: + one more forward when remat recomputes it

The convention MaxText and MaxDiffusion log: 6 N tokens (training: forward 2 N, backward 4 N) for
the matmul weights N, plus the attention scores and weighted values, which no weight counts.
For the Wan-layout DiT of `models/dit.py`, per clip of S video tokens and L text tokens:

  N_video = depth (4 d^2 self-attention q,k,v,o + 2 d^2 cross-attention q,o + 2 d f MLP)
            + patch embedding (p c_in d) + output projection (d p c_out)       per video token
  N_text  = depth (2 d^2 cross-attention k,v) + text embedder (t d + d^2)     per text token
  N_clip  = time embedder (256 d + d^2) + its 6-way projection (6 d^2)        once per clip
  model     = (2 forward | 6 train) (S N_video + L N_text + N_clip)
  attention = (4 forward | 12 train) depth d (S^2 + S L)    (self + cross: QK^T and AV)

Not counted: norms, RoPE, softmax and other element-wise work, the text encoder and the VAE
(trained jointly or not, they are not the DiT), and Wan 2.1 I2V's image tokens. `model` is 6 N
tokens with N the DiT's matmul parameters; it differs from 6 x (all parameters) x S by the
biases, norms and modulation tables, which do no matmul.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple


class DiTFlops(NamedTuple):
    model: float  # 2 N tokens (forward) or 6 N tokens (train): the matmul weights
    attention: float  # scores and weighted values, self and cross (x3 when training)
    executed: float  # model + attention + the forward remat recomputes (train with remat)

    @property
    def mfu_flops(self) -> float:
        """What MFU divides by time x peak: model + attention (recompute is not useful work)."""
        return self.model + self.attention


def _field(model: Any, key: str):
    """A DiT hyper-parameter from a DiTConfig, a ConfigDict or a dict (DiTConfig's default when
    the config leaves it out)."""
    if dataclasses.is_dataclass(model):
        return getattr(model, key)
    from sora_jax.models.dit import DiTConfig  # its defaults; imported late: it brings in jax

    default = {f.name: f.default for f in dataclasses.fields(DiTConfig)}[key]
    return model.get(key, default)


def dit_flops(
    model: Any, tokens: int, batch: int, text_length: int, *, train: bool = True
) -> DiTFlops:
    """FLOPs of one DiT step over `batch` clips of `tokens` video tokens and `text_length` text
    tokens each: a training step (forward + backward) or, `train=False`, one forward.

    `model`: a DiTConfig, or `config.model` as a ConfigDict or dict."""
    d, f, depth = (int(_field(model, k)) for k in ('dim', 'ffn_dim', 'depth'))
    patch = math.prod(int(p) for p in _field(model, 'patch_size'))
    c_in, c_out = int(_field(model, 'in_channels')), int(_field(model, 'out_channels'))
    text_dim, freq_dim = int(_field(model, 'text_dim')), int(_field(model, 'freq_dim'))
    s, l, b = int(tokens), int(text_length), int(batch)
    n_video = depth * (6 * d * d + 2 * d * f) + patch * c_in * d + d * patch * c_out
    n_text = depth * 2 * d * d + text_dim * d + d * d
    n_clip = freq_dim * d + d * d + 6 * d * d
    forward = 2.0 * b * (s * n_video + l * n_text + n_clip)
    attention = 4.0 * b * depth * d * (s * s + s * l)
    if not train:
        return DiTFlops(forward, attention, forward + attention)
    recompute = forward + attention if _field(model, 'remat') not in ('none', None) else 0.0
    return DiTFlops(3 * forward, 3 * attention, 3 * (forward + attention) + recompute)
