"""A LoRA training run (train/lora.py) read for sampling: its adapters, and the base they adapt.

A LoRA run's checkpoints hold only the adapters (`nnx.LoRAParam`s of the DiT) plus, in the saved
config, a pointer to its base: `lora.base` (a training workdir / exported bundle, or a converted
Wan folder) and `lora.base_sha256` (`base_fingerprint` of it when the run started).
`read_adapter` returns the adapters as `convert/lora.py` holds a LoRA file's, so
`TextToVideo.from_checkpoint` merges them into the base like any LoRA file.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

import jax
from flax import nnx

from sora_jax.convert import checkpoint as converted
from sora_jax.convert import lora as lora_files
from sora_jax.io import checkpoint as ckpt
from sora_jax.models import denoiser
from sora_jax.models import dit as dit_lib
from sora_jax.models import lora as lora_lib

# config.objective -> the model its checkpoints hold (train/objectives/<name>.py's build_model)
MODELS = {'flow': denoiser.build_model, 'flow_context': dit_lib.build_model}


def base_fingerprint(source: str) -> tuple[str, int]:
    """(sha256 of the newest checkpoint's files, its step) of a workdir / bundle; (sha256 of
    its transformer/ files, 0) of a converted Wan folder (convert/checkpoint.py)."""
    if converted.is_converted(source):
        return converted.fingerprint(source), 0
    directory = pathlib.Path(ckpt.checkpoint_dir(source))
    steps = sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    if not steps:
        raise ValueError(f'lora base {source!r} holds no complete checkpoint.')
    step_dir = directory / str(steps[-1])
    h = hashlib.sha256()
    for path in sorted(p for p in step_dir.rglob('*') if p.is_file()):
        h.update(os.fspath(path.relative_to(step_dir)).encode())
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 24), b''):
                h.update(chunk)
    return h.hexdigest(), steps[-1]


def read_adapter(workdir: str, *, ema: bool = True):
    """(adapter as `convert/lora.py` holds it, step, config) of a LoRA run's newest checkpoint
    (its EMA adapters unless `ema=False`)."""
    cdir = ckpt.checkpoint_dir(workdir)
    config = ckpt.load_config(cdir)
    if not lora_lib.enabled(config):
        raise ValueError(f'{workdir!r} is not a LoRA run (its config has lora.rank=0).')
    objective = config.get('objective', 'flow')
    if objective not in MODELS:
        raise ValueError(
            f'{workdir!r} is a LoRA run of objective {objective!r}; LoRA adapts the '
            f'DiT of the objectives {sorted(MODELS)} only.'
        )
    build = MODELS[objective]  # flow (Denoiser) or flow_context (a DiT alone)
    model = nnx.eval_shape(lambda: build(config, nnx.Rngs(0)))
    dit = getattr(model, 'dit', model)
    abstract = nnx.state(dit, nnx.LoRAParam)
    prefix = ('dit',) if dit is not model else ()
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    wrapped = abstract
    for p in reversed(prefix):
        wrapped = {p: wrapped}
    params, step = ckpt.restore_params(cdir, wrapped, ema=ema)
    for p in prefix:
        params = params[p]
    flat = {'/'.join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.State(params))}
    return lora_files.from_params(flat, dit.cfg.lora), step, config
