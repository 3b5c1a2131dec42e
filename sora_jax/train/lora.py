"""LoRA fine-tuning in the train loop: adapters train, the base model is frozen.

With `config.lora.rank > 0` the train state is partitioned (see `train/state.py`):
  state.params, state.ema_params, state.opt_state   the adapters only (`nnx.LoRAParam`)
  state.frozen                                      the base parameters (no gradient, no
                                                    optimizer state, optionally bfloat16)
The base comes from `lora.base` (default: `train.init_from`), a training workdir or exported
bundle, or a converted Wan 2.1 folder (configs/wan21.py:lora_*, train/wan_frozen.py); it is
loaded at the start and again on every resume. Checkpoints hold only the adapters
(`state.frozen` is dropped before saving) plus, in the saved config, a pointer to the base:
`lora.base` (its path) and `lora.base_sha256` (a hash of its checkpoint files). A resume whose
base files no longer hash the same is an error. Reading a run's adapters and hashing its base
(sampling needs both) is `convert/lora_run.py`'s; `config.lora` itself is `models/lora.py`'s.
"""

from __future__ import annotations

import os

import jax
from absl import logging
from flax import nnx

from sora_jax.convert import checkpoint as converted
from sora_jax.convert import lora_run
from sora_jax.io import checkpoint as ckpt
from sora_jax.models import lora as lora_lib
from sora_jax.models.lora import BASE_DTYPES
from sora_jax.train import wan_frozen


def base_source(config) -> str:
    """The base model directory: lora.base, else train.init_from, else (a Wan config,
    objective flow_context) the converted folder config.checkpoint."""
    wan = config.get('checkpoint', '') if wan_frozen.uses_wan(config) else ''
    return config.lora.get('base', '') or config.train.get('init_from', '') or wan


def validate(config) -> None:
    """lora.* keys, and a base model when LoRA is on."""
    lc = lora_lib.config_of(config)
    if not lc.enabled:
        return
    if config.get('objective', 'flow') not in ('flow', 'flow_context'):
        raise ValueError(
            f'lora.rank={lc.rank}: LoRA adapts the DiT; config.objective='
            f'{config.objective!r} has none. Use a DiT config or lora.rank=0.'
        )
    if wan_frozen.uses_wan(config):  # config.checkpoint must be a converted Wan folder
        wan_frozen.validate(config)
    src = base_source(config)
    if not src:
        raise ValueError(
            f'lora.rank={lc.rank} needs a base model to adapt: set '
            '--config.train.init_from=DIR (or --config.lora.base=DIR), a training '
            'workdir or exported bundle such as checkpoints/shapes.'
        )
    if not os.path.isdir(src):
        raise ValueError(
            f'lora.base / train.init_from={src!r} is not a directory; give a '
            'training workdir or exported bundle (e.g. checkpoints/shapes).'
        )


def inherit_latent_stats(config) -> None:
    """Empty `latent_mean` / `latent_std` (with a VAE) become the base run's: adapters learn in
    the base model's latent space, not in statistics of the new data."""
    if not lora_lib.enabled(config) or config.get('autoencoder', 'none') in ('none', '', None):
        return
    if len(config.get('latent_mean', ())):
        return
    base = ckpt.load_config(ckpt.checkpoint_dir(base_source(config)))
    if len(base.get('latent_mean', ())):
        config.latent_mean = tuple(base.latent_mean)
        config.latent_std = tuple(base.latent_std)
        logging.info('LoRA: latent statistics of the base %s.', base_source(config))


def split(model: nnx.Module, config):
    """(adapters, base) of a freshly built model; base cast to lora.base_dtype."""
    _, adapters, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    dtype = BASE_DTYPES[lora_lib.config_of(config).base_dtype]
    base = jax.tree.map(lambda x: x.astype(dtype), base)
    return adapters, base


def load_base(state, config, expected_sha256: str = ''):
    """state with `frozen` restored from the base (its EMA params unless
    train.init_from_ema=False), and the base's hash; `expected_sha256` (from a checkpoint being
    resumed) must match it."""
    src = base_source(config)
    sha, _ = lora_run.base_fingerprint(src)
    if expected_sha256 and sha != expected_sha256:
        raise ValueError(
            f'lora base {src!r} changed since this run started: its files hash to '
            f'{sha[:12]}..., the checkpoint was trained on {expected_sha256[:12]}...; '
            'point lora.base / train.init_from at the original base.'
        )
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state.frozen
    )
    if converted.is_converted(src):  # a converted Wan folder: its DiT is the whole base
        frozen, step = wan_frozen.load_dit_params(src, abstract), 0
        return _loaded(state.replace(frozen=frozen), src, sha, step), sha
    try:
        frozen, step = ckpt.restore_params(
            ckpt.checkpoint_dir(src), abstract, ema=bool(config.train.get('init_from_ema', True))
        )
    except ValueError as e:
        raise ValueError(
            f'lora base {src!r} does not fit this model ({e}); the model config '
            'must match the base run.'
        ) from e
    return _loaded(state.replace(frozen=frozen), src, sha, step), sha


def _loaded(state, src: str, sha: str, step: int):
    n = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info(
        'LoRA: base params of step %d of %s (sha256 %s...) frozen; %s adapter params train.',
        step,
        src,
        sha[:12],
        f'{n:,}',
    )
    return state


def with_pointer(config, sha256: str):
    """A copy of config whose lora section names the base (path and hash), for checkpoints."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        c.lora.base = base_source(config)
        c.lora.base_sha256 = sha256
    return c


def saved_sha256(workdir: str) -> str:
    """lora.base_sha256 recorded in the newest checkpoint of a run ('' if none)."""
    cfg = ckpt.load_config(os.path.join(workdir, 'checkpoints'))
    return cfg.get('lora', {}).get('base_sha256', '')


def export(workdir: str, out: str, *, ema: bool = True) -> dict:
    """Writes the adapters of a LoRA run's newest checkpoint (EMA unless `ema=False`) as a
    safetensors file in the diffusers layout (`convert/lora.py`); returns
    {'file', 'step', 'bytes', 'adapter_params', 'base', 'base_sha256'}."""
    from sora_jax.convert import lora as lora_files

    adapter, step, config = lora_run.read_adapter(workdir, ema=ema)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tensors = lora_files.save(out, adapter)
    return {
        'file': out,
        'step': step,
        'bytes': os.path.getsize(out),
        'adapter_params': int(sum(t.size for t in tensors.values())),
        'base': config.lora.get('base', ''),
        'base_sha256': config.lora.get('base_sha256', ''),
    }
