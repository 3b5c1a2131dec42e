"""Multi-host start-up: `jax.distributed.initialize` from flags or the environment."""

from __future__ import annotations

import os

import jax
from absl import logging


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """No-op for one process. Otherwise flags win over SORA_JAX_COORDINATOR /
    SORA_JAX_NUM_PROCESSES / SORA_JAX_PROCESS_ID; on TPU VMs / SLURM call with nothing and JAX
    auto-detects (set SORA_JAX_DISTRIBUTED=auto)."""
    coordinator = coordinator or os.environ.get('SORA_JAX_COORDINATOR')
    num_processes = num_processes or _int_env('SORA_JAX_NUM_PROCESSES')
    process_id = process_id if process_id is not None else _int_env('SORA_JAX_PROCESS_ID')
    if os.environ.get('SORA_JAX_DISTRIBUTED') == 'auto':
        jax.distributed.initialize()
    elif coordinator:
        if num_processes is None or process_id is None:
            raise ValueError(
                'multi-host needs --num_processes and --process_id with '
                f'--coordinator={coordinator}.'
            )
        # CPU collectives across processes need gloo; this only affects the CPU backend, and
        # querying the backend here would start XLA before jax.distributed may initialise.
        jax.config.update('jax_cpu_collectives_implementation', 'gloo')
        jax.distributed.initialize(coordinator, num_processes, process_id)
    else:
        return
    logging.info(
        'process %d of %d, %d local / %d global devices',
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def _int_env(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v else None
