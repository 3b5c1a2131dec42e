"""One attention entry point: kernel dispatch per compile target, and context parallelism.

`dot_product_attention(q, k, v, mask, impl=...)` with q: [B, Nq, H, D], k/v: [B, Nk, H, D],
mask: [B, Nk] (True = attend) or None. The kernels ('xla', 'cudnn', 'chunked', 'splash', and
'auto' = cudnn on GPU, splash on TPU, xla elsewhere, judged by the mesh being compiled for) live
in `models/attention_kernels.py`. All return [B, Nq, H, D] in q's dtype and agree numerically
(tests/models/test_attention.py).

`context_parallel='ulysses'|'ring'` runs the chosen kernel with tokens sharded over the
sequence mesh axis (`parallel/context.py`: all-to-all heads<->tokens, or a key/value ring);
'none' (default) leaves the sharding to XLA (splash: a shard_map over batch and heads).
"""

from __future__ import annotations

from sora_jax.models.attention_kernels import (  # noqa: F401
    IMPLS,
    attend,
    chunked_attention,
    online_softmax_step,
    resolve_impl,
    splash_attention,
    target_platform,
)
from sora_jax.parallel import context

__all__ = [
    'IMPLS',
    'attend',
    'chunked_attention',
    'dot_product_attention',
    'online_softmax_step',
    'resolve_impl',
    'splash_attention',
    'target_platform',
]


def dot_product_attention(
    q, k, v, mask=None, *, impl: str = 'auto', chunk_size: int = 512, context_parallel: str = 'none'
):
    if context_parallel != 'none':
        return context.context_parallel_attention(
            q, k, v, mask, method=context_parallel, impl=impl, chunk_size=chunk_size
        )
    return attend(q, k, v, mask, impl=impl, chunk_size=chunk_size)
