"""One ahead-of-time check: config + TPU slice + task -> compiled step -> report dict.

    rep = aot.run.check(config, 'v5p-64', 'train', num_frames=81, height=720, width=1280,
                        batch_size=16)
    print(aot.report.text(rep))

`experiments/aot.py` is this function behind flags. Bad input (a slice name, a mesh that does
not cover the slice, a size the VAE or patch does not divide) is a ValueError before compiling.
"""

from __future__ import annotations

import time

from sora_jax.aot import compile as compile_lib
from sora_jax.aot import report as report_lib
from sora_jax.aot import topology
from sora_jax.models import attention_kernels
from sora_jax.models import quantize as quantize_lib
from sora_jax.parallel import mesh as mesh_lib
from sora_jax.train import state as state_lib


def check(
    config,
    topology_name: str,
    task: str,
    *,
    num_frames: int,
    height: int,
    width: int,
    batch_size: int,
    text_length: int | None = None,
    quantize: str | None = None,
    rollout: compile_lib.RolloutShape | None = None,
) -> dict:
    """`quantize` ('int8' | 'fp8'): task 'sample' with weight-only quantized DiT block kernels;
    `rollout` (task 'rollout'): the chunked rollout's cache window, sinks and sampler."""
    sl = topology.resolve(topology_name)
    if task not in compile_lib.TASKS:
        raise ValueError(f'--task={task!r} is not one of {compile_lib.TASKS}.')
    if quantize_lib.check(quantize) and task != 'sample':
        raise ValueError(f'--quantize={quantize} applies to --task=sample, not {task!r}.')
    text_length = int(config.text.max_length if text_length is None else text_length)
    shape = compile_lib.Shape(num_frames, height, width, batch_size, text_length)
    shape.latent(config)  # size errors before anything is built
    devices = topology.devices(sl)
    mesh = mesh_lib.make_mesh(tuple(config.mesh.shape), devices=devices)
    mesh_shape = dict(mesh.shape)
    groups = mesh_shape['data'] * mesh_shape['fsdp']
    cfg_rows = task in ('sample', 'rollout')  # the classifier-free-guidance batch: 2B rows
    rows = batch_size * (2 if cfg_rows else 1)
    if rows % groups:
        raise ValueError(
            f'--batch_size={batch_size} gives {rows} rows, not divisible by the '
            f'data x fsdp axes ({groups}) of mesh {mesh_shape}; use a multiple of '
            f'{groups // (2 if cfg_rows and groups % 2 == 0 else 1)}.'
        )
    model = (
        compile_lib.train_config(config).model.to_dict()
        if task == 'train'
        else config.model.to_dict()
    )
    impl = (
        attention_kernels.resolve_impl(config.model.attention, 'tpu') if task != 'decode' else None
    )
    t0 = time.time()
    try:
        compiled, info = compile_lib.compile_task(
            config,
            task,
            mesh,
            shape,
            hbm_bytes=sl.spec.hbm_bytes,
            quantize=quantize,
            rollout=rollout,
        )
    except Exception as e:  # XLA refuses a program that does not fit: report it
        msg = str(e)
        if report_lib.oom_from_error(msg) is None:
            raise
        return report_lib.failed(
            sl,
            task,
            msg,
            mesh_shape=mesh_shape,
            batch_size=batch_size,
            model=model,
            attention=impl,
            compile_s=time.time() - t0,
        )
    rep = report_lib.build(
        sl,
        compiled,
        info,
        batch_size=batch_size,
        text_length=text_length,
        mesh_shape=mesh_shape,
        compile_s=time.time() - t0,
    )
    rep['clip'] = dict(num_frames=num_frames, height=height, width=width, text_length=text_length)
    if task == 'sample':
        rep['quantize'] = quantize_lib.check(quantize)
        rep['param_bytes'] = info['param_bytes']  # the DiT's weights as stored, all chips
    if task == 'train':
        rep['remat'] = model.get('remat')
        rep['param_dtype'] = model.get('param_dtype')
        rep['train_memory'] = {  # train/state.py's memory options
            k: config.train.get(k, d) for k, d in state_lib.MEMORY_DEFAULTS.items()
        }
    return rep
