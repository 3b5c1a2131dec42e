"""Low-rank adapters (LoRA) on the DiT's block projections, with Flax's `nnx.LoRALinear`.

A LoRA layer computes `x @ W + b + scale * (x @ A @ B)` with A: [din, r], B: [r, dout]
(`nnx.LoRAParam`s, a subclass of `nnx.Param`), B starting at zero so a fresh adapter leaves the
model unchanged. `scale` is alpha / rank for training; adapters loaded from files
(`convert/lora.py`) fold their scale into B and use scale 1.

Adapters live inside the scanned block stack, so like every block parameter they carry a
leading 'layers' axis: A: [depth, din, r], B: [depth, r, dout]. Their logical axes are the
base kernel's (A: (in, None), B: (None, out)), so the mesh rules shard them like the kernel.

Target names (`config.lora.targets`) -> module paths inside a block (`MODULES`):
  attn1.q attn1.k attn1.v attn1.o   self-attention projections   (attn1.* = all four)
  attn2.q attn2.k attn2.v attn2.o   cross-attention projections  (attn2.* = all four)
  ffn.in ffn.out                    the MLP                      (ffn = both)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Module paths inside a DiT block that can carry an adapter, in a fixed order.
MODULES = (
    'attn1.to_q',
    'attn1.to_k',
    'attn1.to_v',
    'attn1.to_out',
    'attn2.to_q',
    'attn2.to_k',
    'attn2.to_v',
    'attn2.to_out',
    'ffn.proj_in',
    'ffn.proj_out',
)
_SHORT = {'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'o': 'to_out'}
TARGETS = {f'{a}.{s}': f'{a}.{m}' for a in ('attn1', 'attn2') for s, m in _SHORT.items()}
TARGETS.update({'ffn.in': 'ffn.proj_in', 'ffn.out': 'ffn.proj_out'})
GROUPS = {
    'attn1.*': tuple(m for m in MODULES if m.startswith('attn1.')),
    'attn2.*': tuple(m for m in MODULES if m.startswith('attn2.')),
    'ffn': ('ffn.proj_in', 'ffn.proj_out'),
    'ffn.*': ('ffn.proj_in', 'ffn.proj_out'),
    'all': MODULES,
}
BASE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# (module path, rank, scale) per adapted module: what `DiTConfig.lora` holds.
Layout = tuple[tuple[str, int, float], ...]


def resolve_targets(targets: Sequence[str]) -> tuple[str, ...]:
    """Target names -> module paths (in `MODULES` order); unknown names are a ValueError."""
    out = set()
    for t in targets:
        if t in GROUPS:
            out.update(GROUPS[t])
        elif t in TARGETS:
            out.add(TARGETS[t])
        elif t in MODULES:
            out.add(t)
        else:
            raise ValueError(
                f'lora.targets: unknown target {t!r}; use any of '
                f'{sorted(TARGETS) + sorted(GROUPS)}.'
            )
    return tuple(m for m in MODULES if m in out)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """`config.lora`: adapters for fine-tuning (rank 0: off, the whole model trains)."""

    rank: int = 0
    alpha: float = 0.0  # scale = alpha / rank; 0 means alpha = rank (scale 1)
    targets: tuple[str, ...] = ('attn1.*', 'attn2.*', 'ffn')
    base_dtype: str = 'float32'  # the frozen base weights: float32 or bfloat16
    dropout: float = 0.0  # only 0 is supported (no adapter dropout)

    @classmethod
    def from_config(cls, cfg: Any) -> 'LoRAConfig':
        if cfg is None:
            return cls()
        d = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f'unknown lora config keys {unknown}; valid keys: {sorted(names)}.')
        if 'targets' in d:
            t = d['targets']
            d['targets'] = (t,) if isinstance(t, str) else tuple(t)
        c = cls(**d)
        c.validate()
        return c

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return (self.alpha or self.rank) / self.rank

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(
                f'lora.rank={self.rank!r} must be an int >= 0 (0 turns LoRA off); '
                'try --config.lora.rank=8.'
            )
        if self.alpha < 0:
            raise ValueError(f'lora.alpha={self.alpha} must be >= 0 (0 means alpha = rank).')
        if self.base_dtype not in BASE_DTYPES:
            raise ValueError(
                f'lora.base_dtype={self.base_dtype!r} is not one of {sorted(BASE_DTYPES)}.'
            )
        if self.dropout != 0:
            raise ValueError(f'lora.dropout={self.dropout} is not supported; set it to 0.')
        if self.enabled and not resolve_targets(self.targets):
            raise ValueError(
                f'lora.targets={self.targets!r} selects no module; use e.g. '
                "('attn1.*', 'attn2.*', 'ffn')."
            )

    def layout(self) -> Layout:
        """(module, rank, scale) for every targeted module; () when off."""
        if not self.enabled:
            return ()
        return tuple((m, self.rank, self.scale) for m in resolve_targets(self.targets))


POINTER_KEYS = ('base', 'base_sha256')  # config.lora keys naming the base, not the adapters


def config_of(config) -> LoRAConfig:
    """The `LoRAConfig` of a run config (`config.lora`; none: off). The keys a LoRA run's saved
    config adds to name its base (`POINTER_KEYS`, train/lora.py) are not adapter settings."""
    section = config.get('lora', None)
    if section is None:
        return LoRAConfig()
    d = section.to_dict() if hasattr(section, 'to_dict') else dict(section)
    return LoRAConfig.from_config({k: v for k, v in d.items() if k not in POINTER_KEYS})


def enabled(config) -> bool:
    return config_of(config).enabled


def lora_of(layout: Layout, prefix: str) -> dict[str, tuple[int, float]]:
    """{name: (rank, scale)} of the modules under `prefix` ('attn1.', 'ffn.') in a layout."""
    return {m[len(prefix) :]: (r, s) for m, r, s in layout if m.startswith(prefix)}


class LoRALinear(nnx.LoRALinear):
    """`nnx.LoRALinear` with the adapter output scaled: x W + b + scale (x A B)."""

    def __init__(self, din: int, dout: int, *, rank: int, scale: float, axes, dtype, **kw):
        in_axis, out_axis = axes
        super().__init__(
            din,
            dout,
            lora_rank=rank,
            lora_dtype=dtype,
            dtype=dtype,
            lora_param_dtype=jnp.float32,
            a_metadata={'out_sharding': (in_axis, None)},
            b_metadata={'out_sharding': (None, out_axis)},
            **kw,
        )
        self.lora_scale = float(scale)

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        y = nnx.Linear.__call__(self, x, out_sharding=out_sharding)
        return y + self.lora_scale * self.lora(x)


def count(state) -> int:
    return sum(x.size for x in jax.tree.leaves(state))
