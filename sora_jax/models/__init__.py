"""Model definitions (Flax NNX). Parameters carry logical axis names only.

Shardings are applied by `jax.jit(out_shardings=...)` from `parallel/mesh.py`, never eagerly at
variable creation, so models build the same way with or without a mesh in scope.
"""

from flax import nnx

nnx.use_eager_sharding(False)
