"""Lower and compile the real steps from abstract inputs (nothing allocated), for any mesh.

  train   `train/step.make_train_step` (optimizer state, EMA, remat, the configured attention
          kernel) jitted exactly as `train/loop.py` jits it, over the train state's shardings
  sample  one DiT forward on the classifier-free-guidance batch (2B clips), as
          `pipeline.TextToVideo` runs it every sampling step (with Wan 2.1 I2V's image channels
          and CLIP tokens, Wan 2.2 TI2V's per-token timesteps)
  decode  the VAE's chunked causal decode (`models/frozen_vae._decode`, the pipeline's)
  rollout one chunk of a causal DiT's chunked rollout (`pipeline/rollout.chunk_step`: the
          sampler's steps on the CFG batch attending to a key/value cache of `window` past
          chunks, then the cache write): the one program every chunk of a video of any length runs

`compile_task(config, task, mesh, ...)` returns (compiled, info): `info` holds what the report
needs besides the executable (token counts, parameter counts, the attention kernel chosen).
"""

from __future__ import annotations

import dataclasses
import importlib
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sora_jax.models import attention_kernels
from sora_jax.models import quantize as quantize_lib
from sora_jax.parallel import mesh as mesh_lib

TASKS = ('train', 'sample', 'decode', 'rollout')


@dataclasses.dataclass
class Shape:
    """A clip size in pixels and the latent grid it gives."""

    num_frames: int
    height: int
    width: int
    batch_size: int
    text_length: int

    def latent(self, config) -> tuple[int, int, int]:
        tf = 2 ** sum(bool(x) for x in config.vae.temperal_downsample)
        sf = 2 ** (len(config.vae.dim_mult) - 1) * int(config.vae.get('patch_size', None) or 1)
        if (self.num_frames - 1) % tf:
            raise ValueError(
                f'--num_frames={self.num_frames} is not 1 + {tf}k (causal VAE); use '
                f'{1 + max(1, round((self.num_frames - 1) / tf)) * tf}.'
            )
        pt, ph, pw = tuple(config.model.patch_size)
        lt, lh, lw = 1 + (self.num_frames - 1) // tf, self.height // sf, self.width // sf
        for name, n, f in (('height', self.height, sf * ph), ('width', self.width, sf * pw)):
            if n % f:
                raise ValueError(
                    f'--{name}={n} is not a multiple of {f} (VAE {sf} x patch); use '
                    f'{max(f, n // f * f)}.'
                )
        if lt % pt:
            raise ValueError(
                f'--num_frames={self.num_frames}: {lt} latent frames are not '
                f'divisible by the temporal patch {pt}.'
            )
        return lt, lh, lw

    def tokens(self, config) -> int:
        lt, lh, lw = self.latent(config)
        pt, ph, pw = tuple(config.model.patch_size)
        return (lt // pt) * (lh // ph) * (lw // pw)


class ArgumentsExceedHBM(ValueError):
    """The train state alone (params, optimizer state, EMA) exceeds a chip's HBM: no compile."""

    def __init__(self, needed: int, available: float):
        self.needed, self.available = needed, available
        super().__init__(
            f'RESOURCE_EXHAUSTED: train state ({needed / 2**30:.2f}G) exceeds '
            f'available HBM ({available / 2**30:.2f}G) before any activation'
        )


def objective_module(config):
    name = config.get('objective', 'flow_context')
    return importlib.import_module(f'sora_jax.train.objectives.{name}')


def train_config(config):
    """The config a train step is built from: train.param_dtype / train.remat (when the config
    sets them, as configs/wan21.py does) replace the sampling-time model.* values."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        for key in ('param_dtype', 'remat'):
            if key in c.train:
                c.model[key] = c.train[key]
    return c


def _abstract(tree, shardings):
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings
    )


def _compile_train(config, mesh, rules, shape: Shape, hbm_bytes: float | None = None):
    from sora_jax.train import loop
    from sora_jax.train import step as step_lib

    config = train_config(config)
    objective = objective_module(config)
    if not hasattr(objective, 'batch_shapes'):
        raise ValueError(
            f'config.objective={config.objective!r} has no batch_shapes(); the AOT '
            'train task supports flow_context (configs/wan21.py).'
        )
    graphdef, abstract, shardings, tx, schedule = loop.abstract_state(
        config, mesh, rules, objective
    )
    state = _abstract(abstract, shardings)
    arg_bytes = sum(
        math.prod(s.shard_shape(a.shape)) * a.dtype.itemsize
        for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings))
    )
    if hbm_bytes is not None and arg_bytes > hbm_bytes:
        raise ArgumentsExceedHBM(arg_bytes, hbm_bytes)
    batch = objective.batch_shapes(
        config, shape.batch_size, shape.latent(config), shape.text_length
    )
    batch = {
        k: jax.ShapeDtypeStruct(
            v.shape, v.dtype, sharding=mesh_lib.batch_sharding(mesh, v.ndim, rules)
        )
        for k, v in batch.items()
    }
    step_fn = step_lib.make_train_step(graphdef, objective.loss_fn, tx, config, schedule)
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        lowered = step_lib.jit_train_step(step_fn, shardings).lower(state, batch)
        compiled = lowered.compile()
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))
    return compiled, dict(params=n, model=config.model.to_dict())


def _compile_sample(config, mesh, rules, shape: Shape, hbm_bytes=None, quantize=None):
    """One guided DiT forward, with the inputs the pipeline gives the model at every step: Wan 2.1
    I2V (model.image_dim > 0) its model.in_channels-wide input (noise, mask, image latents) and
    the CLIP image tokens; Wan 2.2 TI2V (sample.expand_timesteps) one timestep per token.
    `quantize` ('int8' | 'fp8'): the block kernels as `models/quantize.py` stores them (qvalues
    sharded like the kernels), dequantized one block at a time inside the scan, as sampling runs."""
    objective = objective_module(config)
    c = int(config.latent_channels)
    image_dim = int(config.model.get('image_dim', 0) or 0)
    in_c = int(config.model.in_channels) if image_dim else c

    def build():
        if not image_dim:
            return objective.build_model(config, nnx.Rngs(0))
        from sora_jax.models.dit import DiT, DiTConfig  # the I2V DiT: input wider than output

        return DiT(
            DiTConfig.from_config(dict(config.model.to_dict(), out_channels=c)), rngs=nnx.Rngs(0)
        )

    model = nnx.eval_shape(build)
    graphdef, params = nnx.split(model, nnx.Param)[0], nnx.state(model, nnx.Param)
    shardings = mesh_lib.state_shardings(params, mesh, rules)
    params = _abstract(params, shardings)
    params = quantize_lib.abstract_params(params, quantize)
    b2 = 2 * shape.batch_size  # conditional + unconditional rows
    lt, lh, lw = shape.latent(config)
    dt = jnp.dtype(config.model.dtype)
    sh = lambda nd: mesh_lib.batch_sharding(mesh, nd, rules)
    x = jax.ShapeDtypeStruct((b2, lt, lh, lw, in_c), jnp.float32, sharding=sh(5))
    per_token = bool(config.get('sample', {}).get('expand_timesteps', False))
    t = jax.ShapeDtypeStruct(
        (b2, shape.tokens(config)) if per_token else (b2,),
        jnp.float32,
        sharding=sh(2 if per_token else 1),
    )
    ctx = jax.ShapeDtypeStruct(
        (b2, shape.text_length, int(config.model.text_dim)), dt, sharding=sh(3)
    )
    args = [params, x, t, ctx]
    if image_dim:
        enc = config.image_encoder  # CLIP: (image_size / patch_size)^2 patches + [CLS]
        tokens = (int(enc.image_size) // int(enc.patch_size)) ** 2 + 1
        args.append(jax.ShapeDtypeStruct((b2, tokens, image_dim), jnp.float32, sharding=sh(3)))

    def forward(p, x, t, ctx, image=None):
        return nnx.merge(graphdef, p)(x, t, ctx, image=image)

    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        compiled = jax.jit(forward, out_shardings=sh(5)).lower(*args).compile()
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params, is_leaf=quantize_lib.is_quantized))
    names = ('latents', 'timesteps', 'context', 'image')
    return compiled, dict(
        params=n,
        param_bytes=quantize_lib.weight_bytes(params),
        quantize=quantize,
        model=config.model.to_dict(),
        inputs={k: a.shape for k, a in zip(names, args[1:])},
    )


def _compile_decode(config, mesh, rules, shape: Shape, hbm_bytes=None):
    from sora_jax.models import frozen_vae
    from sora_jax.models import vae as vae_lib

    cfg = vae_lib.from_config(config.vae)
    model = nnx.eval_shape(lambda: vae_lib.WanVAE(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    dtype = jnp.dtype(config.vae.get('dtype', 'float32'))
    state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(
            a.shape,
            dtype if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype,
            sharding=NamedSharding(mesh, P()),
        ),
        state,
    )
    lt, lh, lw = shape.latent(config)
    z = jax.ShapeDtypeStruct(
        (shape.batch_size, lt, lh, lw, int(config.vae.z_dim)),
        jnp.float32,
        sharding=mesh_lib.batch_sharding(mesh, 5, rules),
    )
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        compiled = frozen_vae._decode.lower(graphdef, state, z).compile()
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
    return compiled, dict(params=n, model=config.vae.to_dict())


# The cache's axes [depth, 2B, S, heads, head_dim] as the activations': rows over the batch axes,
# cache slots (past tokens) over the sequence axis like the tokens they came from, heads over tensor.
CACHE_AXES = ('layers', 'act_batch', 'act_length', 'act_heads', None)


@dataclasses.dataclass(frozen=True)
class RolloutShape:
    """The chunked rollout's sizes (`pipeline/rollout.RolloutOptions`): a ring of `window` past
    chunks after `sink_frames` kept latent frames of chunk 0; `steps` of `sampler` per chunk
    (None: config.sample's)."""

    window: int = 4
    sink_frames: int = 0
    steps: int | None = None
    sampler: str | None = None


def _compile_rollout(config, mesh, rules, shape: Shape, hbm_bytes=None, rollout=None):
    """`pipeline/rollout.chunk_step` for one chunk of `model.causal_chunk` latent frames at
    shape's height x width, lowered as the rollout calls it: abstract bf16 parameters sharded as
    sampling shards them, a key/value cache [depth, 2B, S, heads, head_dim] (S = sink tokens +
    window x chunk tokens) with its slots over the sequence axis, noise [B, chunk, h, w, C], the
    text context [2B, L, D], and a traced chunk index, so the compiled program (and its memory)
    is the one every chunk runs, whatever the video's length."""
    from sora_jax.diffusion import samplers
    from sora_jax.models import kv_cache
    from sora_jax.models.dit import DTYPES
    from sora_jax.pipeline import rollout as rollout_lib

    ro = rollout or RolloutShape()
    chunk = int(config.model.get('causal_chunk', 0) or 0)
    if chunk < 1:
        raise ValueError(
            'task rollout compiles a causal DiT: set --config.model.causal_chunk=3 (latent '
            'frames per chunk, as CausVid / Self-Forcing) or another multiple of the patch.'
        )
    if ro.window < 1:
        raise ValueError(f'--rollout_window={ro.window}: need >= 1 past chunk in the cache.')
    if not 0 <= ro.sink_frames <= chunk:
        raise ValueError(f'--rollout_sink_frames={ro.sink_frames} must lie in [0, {chunk}].')
    objective = objective_module(config)
    model = nnx.eval_shape(lambda: objective.build_model(config, nnx.Rngs(0)))
    graphdef, params = nnx.split(model, nnx.Param)[0], nnx.state(model, nnx.Param)
    params = _abstract(params, mesh_lib.state_shardings(params, mesh, rules))
    cfg = model.cfg
    c = int(config.latent_channels)
    _, lh, lw = shape.latent(config)  # the size checks of the other tasks
    pt, ph, pw = cfg.patch_size
    per_frame = (lh // ph) * (lw // pw)
    layout = kv_cache.CacheLayout(
        (chunk // pt) * per_frame, ro.window, (ro.sink_frames // pt) * per_frame
    )
    b, b2 = shape.batch_size, 2 * shape.batch_size
    dt = jnp.dtype(DTYPES[cfg.dtype])
    sh = lambda nd: mesh_lib.batch_sharding(mesh, nd, rules)
    cache_shape = (cfg.depth, b2, layout.size, cfg.num_heads, cfg.head_dim)
    spec = mesh_lib._fit(mesh_lib.logical_to_spec(CACHE_AXES, rules), cache_shape, mesh)
    kv_sh = NamedSharding(mesh, spec)
    cache = kv_cache.KVCache(
        jax.ShapeDtypeStruct(cache_shape, dt, sharding=kv_sh),
        jax.ShapeDtypeStruct(cache_shape, dt, sharding=kv_sh),
        jax.ShapeDtypeStruct(
            (b2, layout.size), jnp.bool_, sharding=NamedSharding(mesh, P(*spec[1:3]))
        ),
    )
    noise_shape = (b, chunk, lh, lw, c)  # B rows: replicated when B does not split
    noise_sh = NamedSharding(mesh, mesh_lib._fit(sh(5).spec, noise_shape, mesh))
    noise = jax.ShapeDtypeStruct(noise_shape, jnp.float32, sharding=noise_sh)
    ctx = jax.ShapeDtypeStruct((b2, shape.text_length, int(cfg.text_dim)), dt, sharding=sh(3))
    scalar = lambda d: jax.ShapeDtypeStruct((), d, sharding=NamedSharding(mesh, P()))
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, P()))
    s = config.sample
    steps = int(ro.steps or s.get('steps', s.get('num_inference_steps', 50)))
    sampler = str(ro.sampler or s.get('sampler', 'unipc'))
    with jax.set_mesh(mesh), mesh_lib.use_rules(rules):
        compiled = rollout_lib.chunk_step.lower(
            params,
            cache,
            noise,
            ctx,
            None,
            scalar(jnp.int32),  # the chunk index: traced, one program for every chunk
            scalar(jnp.float32),
            key,
            graphdef=graphdef,
            layout=layout,
            steps=steps,
            sampler=sampler,
            shift=float(s.get('shift', 1.0)),
        ).compile()
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    cache_bytes = 2 * math.prod(kv_sh.shard_shape(cache_shape)) * dt.itemsize
    tf = 2 ** sum(bool(x) for x in config.vae.temperal_downsample)
    return compiled, dict(
        params=n,
        model=config.model.to_dict(),
        tokens_per_clip=layout.chunk_tokens,
        latent=(chunk, lh, lw),
        inputs={'noise': noise.shape, 'context': ctx.shape, 'cache_k': cache_shape},
        rollout=dict(
            chunk_frames=chunk,
            window=ro.window,
            sink_frames=ro.sink_frames,
            chunk_tokens=layout.chunk_tokens,
            cache_tokens=layout.size,
            cache_bytes_per_chip=cache_bytes,
            steps=steps,
            sampler=sampler,
            # the sampler's DiT calls on the CFG batch, plus one on the clean chunk (the cache write)
            evaluations=samplers.num_evaluations(sampler, steps) + 1,
            video_frames=shape.num_frames,
            chunks=rollout_lib.chunks_for_frames(shape.num_frames, chunk, tf),
            frames_per_chunk=chunk * tf,
        ),
    )


def compile_task(
    config,
    task: str,
    mesh,
    shape: Shape,
    rules=None,
    hbm_bytes=None,
    quantize=None,
    rollout: RolloutShape | None = None,
):
    """(compiled executable, info) of one task for `mesh` (abstract inputs only); `quantize`
    ('int8' | 'fp8', task 'sample' only): weight-only quantized DiT block kernels; `rollout`
    (task 'rollout'): the cache window and sampler of the chunked rollout."""
    if task not in TASKS:
        raise ValueError(f'--task={task!r} is not one of {TASKS}.')
    if quantize_lib.check(quantize) and task != 'sample':
        raise ValueError(f'--quantize={quantize} applies to --task=sample, not {task!r}.')
    rules = mesh_lib.rules_dict(config.mesh.get('rules', ()) if rules is None else rules)
    platform = mesh.devices.flat[0].platform
    impl = attention_kernels.resolve_impl(config.model.attention, platform)
    fn = {
        'train': _compile_train,
        'sample': _compile_sample,
        'decode': _compile_decode,
        'rollout': _compile_rollout,
    }[task]
    kw = {'quantize': quantize} if task == 'sample' else {}
    if task == 'rollout':
        kw = {'rollout': rollout}
    compiled, info = fn(config, mesh, rules, shape, hbm_bytes, **kw)
    info.update(attention=impl if task != 'decode' else None, task=task)
    if task != 'rollout':  # the rollout's tokens and latent are one chunk's
        info.update(tokens_per_clip=shape.tokens(config), latent=shape.latent(config))
    return compiled, info
