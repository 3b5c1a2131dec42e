"""The spacetime Diffusion Transformer (Wan 2.1 `WanTransformer3DModel` layout).

Video latents x: [B, T, H, W, C] are cut into (pt, ph, pw) spacetime patches -> tokens in
(t, h, w) order; blocks of self-attention (3D RoPE, RMS qk-norm over the full width),
cross-attention to text and a GELU MLP, modulated (adaLN) by the timestep, predict the
rectified-flow velocity with the input's shape. Any (T, H, W) divisible by the patch works:
the token count is never fixed. Blocks are stacked on a leading 'layers' axis and run with
`jax.lax.scan` (compile time flat in depth) or unrolled, with an optional remat policy.

Parameter names mirror diffusers so `convert/wan.py` maps Wan weights with a flat key map.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from sora_jax.models import attention as attn_lib
from sora_jax.models import kv_cache, layers, rope
from sora_jax.models import lora as lora_lib
from sora_jax.models import quantize as quantize_lib
from sora_jax.models.config import fields_from_config
from sora_jax.parallel.mesh import constrain

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'dots_all': jax.checkpoint_policies.checkpoint_dots,
    # 'full', with each block's input (the residual stream the backward pass recomputes the block
    # from) kept in pinned host memory instead of HBM (MaxDiffusion's HIDDEN_STATE_WITH_OFFLOAD)
    'offload': jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[],
        names_which_can_be_offloaded=['block_input'],
        offload_src='device',
        offload_dst='pinned_host',
    ),
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_channels: int = 16  # latent channels (+ C + 1 with frame-mask conditioning)
    out_channels: int = 16
    dim: int = 1536
    num_heads: int = 12
    ffn_dim: int = 8960
    depth: int = 30
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    cross_attn_norm: bool = True
    rope_theta: float = 10000.0
    timestep_scale: float = 1000.0  # t in [0, 1] -> Wan timesteps in [0, 1000]
    attention: str = 'auto'
    attention_chunk: int = 512
    context_parallel: str = 'none'  # none | ulysses | ring: self-attention over the sequence axis
    dtype: str = 'float32'  # compute dtype
    param_dtype: str = 'float32'  # master weights
    scan_layers: bool = True
    remat: str = 'none'
    pooled_text: bool = False  # add the masked mean of the text features to the timestep
    # embedding (adaLN), as SD3 does; not in Wan 2.1
    zero_init: bool = False  # adaLN-Zero (DiT, PixArt): modulation, cross-attention output
    # and output projection start at 0, every block as identity
    lora: tuple = ()  # ((module, rank, scale), ...): LoRA adapters on block
    # projections (models/lora.py; set from config.lora or files)
    image_dim: int = 0  # Wan 2.1 I2V: width of the CLIP image features (1280); 0 = no
    # image tokens. Their own key/value projections in attn2.
    image_pos_len: int = 0  # FLF2V: learned positions over the [first, last] image
    # tokens (diffusers pos_embed_seq_len, 514); 0 = none
    causal_chunk: int = 0  # latent frames per chunk of block-causal self-attention (tokens of
    # chunk c attend to chunks <= c; autoregressive rollouts, pipeline/rollout.py); 0 = full

    @classmethod
    def from_config(cls, cfg: Any) -> 'DiTConfig':
        d = fields_from_config(cls, cfg, 'DiT')
        if 'patch_size' in d:
            d['patch_size'] = tuple(d['patch_size'])
        if 'lora' in d:
            d['lora'] = tuple(tuple(x) for x in d['lora'])
        c = cls(**d)
        c.validate()
        return c

    def validate(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(
                f'model.dim={self.dim} is not divisible by model.num_heads='
                f'{self.num_heads}; pick heads that divide the width.'
            )
        if (self.dim // self.num_heads) % 2:
            raise ValueError(
                f'head dim {self.dim // self.num_heads} must be even for RoPE; '
                'change model.dim or model.num_heads.'
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f'model.remat={self.remat!r} is not one of {sorted(REMAT_POLICIES)}.')
        for k in ('dtype', 'param_dtype'):
            if getattr(self, k) not in DTYPES:
                raise ValueError(f'model.{k}={getattr(self, k)!r} is not one of {sorted(DTYPES)}.')
        attn_lib.resolve_impl(self.attention) if self.attention != 'auto' else None
        if self.context_parallel not in ('none', 'ulysses', 'ring'):
            raise ValueError(
                f'model.context_parallel={self.context_parallel!r} is not one of '
                "('none', 'ulysses', 'ring')."
            )
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(
                f'model.patch_size={self.patch_size} must be 3 positive ints (t, h, w).'
            )
        if self.image_dim < 0 or self.image_pos_len < 0:
            raise ValueError(
                f'model.image_dim={self.image_dim} / model.image_pos_len='
                f'{self.image_pos_len} must be >= 0 (0: no image tokens).'
            )
        if self.image_pos_len and not self.image_dim:
            raise ValueError(
                f'model.image_pos_len={self.image_pos_len} needs image tokens; set '
                'model.image_dim (1280 for Wan CLIP features) or image_pos_len=0.'
            )
        if self.causal_chunk < 0 or self.causal_chunk % self.patch_size[0]:
            raise ValueError(
                f'model.causal_chunk={self.causal_chunk} must be 0 (full attention) or a '
                f'positive multiple of the temporal patch {self.patch_size[0]}.'
            )
        if self.causal_chunk and self.context_parallel != 'none':
            raise ValueError(
                f'model.causal_chunk={self.causal_chunk} runs without context parallelism; set '
                "model.context_parallel='none'."
            )
        bad = [m for m, r, _ in self.lora if m not in lora_lib.MODULES or int(r) < 1]
        if bad:
            raise ValueError(
                f'model.lora names {bad}: modules must be in {lora_lib.MODULES} with rank >= 1.'
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def num_params(self) -> int:
        """Parameter count, computed from shapes (no allocation)."""
        state = nnx.state(nnx.eval_shape(lambda: DiT(self, rngs=nnx.Rngs(0))), nnx.Param)
        return sum(math.prod(x.shape) for x in jax.tree.leaves(state))


class CrossKV(NamedTuple):
    """One cross-attention layer's keys/values ([B, L, H, hd]; with a leading [depth] axis when
    stacked over the blocks, as `DiT.text_kv` returns them), and I2V's image-token ones
    ([B, S, H, hd], None without image tokens)."""

    k: jax.Array
    v: jax.Array
    k_img: jax.Array | None = None
    v_img: jax.Array | None = None


def _table_init(rngs: nnx.Rngs, rows: int, cfg: DiTConfig) -> jax.Array:
    """A modulation table [1, rows, dim]: N(0, 1 / dim) as Wan, or zeros with cfg.zero_init."""
    key = rngs.params()  # drawn either way: zero_init leaves the other parameters' init unchanged
    if cfg.zero_init:
        return jnp.zeros((1, rows, cfg.dim), jnp.float32)
    return jax.random.normal(key, (1, rows, cfg.dim), jnp.float32) / math.sqrt(cfg.dim)


class Attention(nnx.Module):
    """Multi-head attention with RMS qk-norm over the full width and optional 3D RoPE."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        eps: float,
        rngs: nnx.Rngs,
        dtype,
        param_dtype,
        impl: str = 'auto',
        chunk: int = 512,
        context_parallel: str = 'none',
        zero_out: bool = False,
        lora: dict | None = None,
        added_kv: bool = False,
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        lora = lora or {}  # {'to_q' / 'to_k' / 'to_v' / 'to_out': (rank, scale)}
        self.heads = heads
        self.impl = impl
        self.chunk = chunk
        self.context_parallel = context_parallel  # used by self-attention only
        self.to_q = layers.linear(dim, dim, ('embed', 'heads'), lora=lora.get('to_q'), **kw)
        self.to_k = layers.linear(dim, dim, ('embed', 'heads'), lora=lora.get('to_k'), **kw)
        self.to_v = layers.linear(dim, dim, ('embed', 'heads'), lora=lora.get('to_v'), **kw)
        self.to_out = layers.linear(
            dim, dim, ('heads', 'embed'), zero_init=zero_out, lora=lora.get('to_out'), **kw
        )
        self.norm_q = layers.RMSNorm(dim, eps=eps)
        self.norm_k = layers.RMSNorm(dim, eps=eps)
        self.added_kv = added_kv
        if added_kv:  # I2V cross-attention: image tokens through their own key/value projections
            self.add_k_proj = layers.linear(dim, dim, ('embed', 'heads'), **kw)
            self.add_v_proj = layers.linear(dim, dim, ('embed', 'heads'), **kw)
            self.norm_added_k = layers.RMSNorm(dim, eps=eps)

    def _project(self, x, src, angles):
        """(q [B, N, H, hd], k, v [B, L, H, hd]), RoPE applied to q and k when angles is given."""
        q = self.norm_q(self.to_q(x))
        k = self.norm_k(self.to_k(src))
        v = self.to_v(src)
        q, k, v = (rearrange(a, 'b n (h d) -> b n h d', h=self.heads) for a in (q, k, v))
        if angles is not None:
            q = rope.apply_rope(q, angles)
            k = rope.apply_rope(k, angles)
        return q, k, v

    def causal_self_attention(self, x, angles, block_tokens: int, past=None):
        """Block-causal self-attention: x: [B, N, D] holds N / block_tokens chunks; tokens of
        chunk c attend to chunks <= c and to `past` (a (k, v, valid) triple of earlier tokens:
        k, v [B, S, H, hd] after RoPE, valid [B, S]) -> (out [B, N, D], k, v [B, N, H, hd]).

        One attention call per chunk over [past, chunks <= c], so every kernel serves it and no
        [N, N] mask is built."""
        q, k, v = self._project(x, x, angles)
        b, n = q.shape[:2]
        if n % block_tokens:
            raise ValueError(
                f'{n} tokens are not whole chunks of {block_tokens}; the latent frames must be '
                'a multiple of model.causal_chunk.'
            )
        outs = []
        for end in range(block_tokens, n + 1, block_tokens):
            kk, vv, mask = k[:, :end], v[:, :end], None
            if past is not None:
                pk, pv, pvalid = past
                kk = jnp.concatenate([pk.astype(k.dtype), kk], 1)
                vv = jnp.concatenate([pv.astype(v.dtype), vv], 1)
                mask = jnp.concatenate([pvalid, jnp.ones((b, end), bool)], 1)
            outs.append(
                attn_lib.dot_product_attention(
                    q[:, end - block_tokens : end],
                    kk,
                    vv,
                    mask,
                    impl=self.impl,
                    chunk_size=self.chunk,
                )
            )
        out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, 1)
        return self.to_out(rearrange(out, 'b n h d -> b n (h d)')), k, v

    def cross_kv(self, context, image_context=None) -> 'CrossKV':
        """The keys/values cross-attention takes from its sources: context [B, L, D] -> k, v
        [B, L, H, hd] (k qk-normed), and for I2V image_context [B, S, D] -> k_img, v_img
        [B, S, H, hd]. They depend on the text (and image) alone, so a sampler computes them
        once per call (`DiT.text_kv`) instead of at every step."""
        split = lambda a: rearrange(a, 'b n (h d) -> b n h d', h=self.heads)
        k, v = split(self.norm_k(self.to_k(context))), split(self.to_v(context))
        if not self.added_kv:
            return CrossKV(k, v)
        if image_context is None:
            raise ValueError(
                'this cross-attention has image key/value projections '
                '(model.image_dim > 0): pass the image tokens.'
            )
        k_img = split(self.norm_added_k(self.add_k_proj(image_context)))
        return CrossKV(k, v, k_img, split(self.add_v_proj(image_context)))

    def __call__(
        self, x, context=None, context_mask=None, angles=None, image_context=None, kv=None
    ):
        """x: [B, N, D]; context: [B, L, D] (None and no `kv` = self-attention); mask: [B, L];
        image_context: [B, S, D] image tokens (I2V cross-attention only): attended separately
        (no mask) with add_k_proj / add_v_proj, the two attention outputs summed. `kv`
        (cross-attention): this layer's `CrossKV` from `cross_kv`, used instead of projecting
        context / image_context again."""
        if context is None and kv is None:
            q, k, v = self._project(x, x, angles)
            q = constrain(q, ('act_batch', 'act_length', 'act_heads', None))
            out = attn_lib.dot_product_attention(
                q,
                k,
                v,
                context_mask,
                impl=self.impl,
                chunk_size=self.chunk,
                context_parallel=self.context_parallel,
            )
            return self.to_out(rearrange(out, 'b n h d -> b n (h d)'))
        if kv is None:
            kv = self.cross_kv(context, image_context)
        q = rearrange(self.norm_q(self.to_q(x)), 'b n (h d) -> b n h d', h=self.heads)
        q = constrain(q, ('act_batch', 'act_length', 'act_heads', None))
        out = attn_lib.dot_product_attention(
            q, kv.k, kv.v, context_mask, impl=self.impl, chunk_size=self.chunk
        )
        if self.added_kv:
            out = out + attn_lib.dot_product_attention(
                q, kv.k_img, kv.v_img, None, impl=self.impl, chunk_size=self.chunk
            ).astype(out.dtype)
        return self.to_out(rearrange(out, 'b n h d -> b n (h d)'))


class DiTBlock(nnx.Module):
    """Self-attention (modulated, gated) -> cross-attention -> FFN (modulated, gated)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        dt, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        kw = dict(
            eps=cfg.eps,
            rngs=rngs,
            dtype=dt,
            param_dtype=pdt,
            impl=cfg.attention,
            chunk=cfg.attention_chunk,
            context_parallel=cfg.context_parallel,
        )
        self.norm1 = layers.LayerNorm(cfg.dim, eps=cfg.eps)
        self.attn1 = Attention(
            cfg.dim, cfg.num_heads, lora=lora_lib.lora_of(cfg.lora, 'attn1.'), **kw
        )
        self.norm2 = layers.LayerNorm(cfg.dim, eps=cfg.eps, affine=cfg.cross_attn_norm)
        self.attn2 = Attention(
            cfg.dim,
            cfg.num_heads,
            zero_out=cfg.zero_init,
            lora=lora_lib.lora_of(cfg.lora, 'attn2.'),
            added_kv=cfg.image_dim > 0,
            **kw,
        )
        self.ffn = layers.FeedForward(
            cfg.dim,
            cfg.ffn_dim,
            rngs=rngs,
            dtype=dt,
            param_dtype=pdt,
            lora=lora_lib.lora_of(cfg.lora, 'ffn.'),
        )
        self.norm3 = layers.LayerNorm(cfg.dim, eps=cfg.eps)
        init = _table_init(rngs, 6, cfg)
        self.scale_shift_table = nnx.Param(init, out_sharding=(None, None, 'norm'))
        self.dtype = dt

    def __call__(
        self,
        x,
        context,
        context_mask,
        temb6,
        angles,
        image_context=None,
        causal=None,
        cross_kv=None,
    ):
        """x: [B, N, D]; temb6: [B, 6, D] float32 (time projection), or [B, N, 6, D] with
        per-token timesteps (Wan 2.2 TI2V); angles: [N, head_dim/2]; image_context: [B, S, D]
        embedded image tokens (I2V) or None. `causal` ((block_tokens, past) with past None or
        this block's (k, v, valid) cache): block-causal self-attention, and the return value is
        (x, (k, v)) with this block's keys/values of x's tokens. `cross_kv`: this block's
        precomputed cross-attention `CrossKV` (context / image_context are then not read)."""
        if temb6.ndim == 4:  # per token: each modulation row [B, N, D]
            mod = self.scale_shift_table[...][:, None] + temb6
            parts = [p[:, :, 0] for p in jnp.split(mod, 6, axis=2)]
        else:
            mod = self.scale_shift_table[...] + temb6
            parts = jnp.split(mod, 6, axis=1)
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = parts
        h = layers.modulate(self.norm1(x), shift_msa, scale_msa).astype(self.dtype)
        kv = None
        if causal is None:
            a = self.attn1(h, angles=angles)
        else:
            a, k, v = self.attn1.causal_self_attention(h, angles, *causal)
            kv = (k, v)
        x = (x.astype(jnp.float32) + a * gate_msa).astype(x.dtype)
        h = self.norm2(x).astype(self.dtype)
        a = self.attn2(h, context, context_mask, image_context=image_context, kv=cross_kv)
        x = x + a.astype(x.dtype)
        h = layers.modulate(self.norm3(x), c_shift, c_scale).astype(self.dtype)
        x = (x.astype(jnp.float32) + self.ffn(h).astype(jnp.float32) * c_gate).astype(x.dtype)
        x = constrain(x, ('act_batch', 'act_length', 'act_embed'))
        return x if causal is None else (x, kv)


class PatchEmbed(nnx.Module):
    """Conv3d with kernel = stride = patch, as a reshape + matmul. kernel: [pt, ph, pw, C, D]."""

    def __init__(self, patch, cin: int, dim: int, *, rngs: nnx.Rngs, dtype, param_dtype):
        fan_in = cin * math.prod(patch)
        init = nnx.initializers.variance_scaling(
            1.0, 'fan_in', 'uniform', in_axis=(0, 1, 2, 3), out_axis=4
        )
        self.patch = tuple(patch)
        self.kernel = nnx.Param(
            init(rngs.params(), (*patch, cin, dim), param_dtype),
            out_sharding=('patch', 'patch', 'patch', 'conv_in', 'embed'),
        )
        self.bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=('embed',))
        self.dtype = dtype
        del fan_in

    def __call__(self, x):
        pt, ph, pw = self.patch
        tok = rearrange(
            x, 'b (f pt) (h ph) (w pw) c -> b (f h w) (pt ph pw c)', pt=pt, ph=ph, pw=pw
        )
        k = self.kernel[...].reshape(-1, self.kernel.shape[-1])
        return tok.astype(self.dtype) @ k.astype(self.dtype) + self.bias[...].astype(self.dtype)


class ImageEmbedder(nnx.Module):
    """CLIP image features -> model width (diffusers `WanImageEmbedding`): FP32 LayerNorm ->
    Linear -> GELU (exact) -> Linear -> FP32 LayerNorm, both norms affine with eps 1e-5. With
    `pos_len` (FLF2V) a learned position table [1, pos_len, image_dim] is added first."""

    def __init__(
        self, image_dim: int, dim: int, *, pos_len: int = 0, rngs: nnx.Rngs, dtype, param_dtype
    ):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm1 = layers.LayerNorm(image_dim, eps=1e-5, affine=True)
        self.proj_in = layers.linear(image_dim, image_dim, ('kv', 'mlp'), **kw)
        self.proj_out = layers.linear(image_dim, dim, ('mlp', 'embed'), **kw)
        self.norm2 = layers.LayerNorm(dim, eps=1e-5, affine=True)
        self.pos_len = pos_len
        if pos_len:
            self.pos_embed = nnx.Param(
                jnp.zeros((1, pos_len, image_dim), jnp.float32), out_sharding=(None, None, 'norm')
            )
        self.dtype = dtype

    def __call__(self, image: jax.Array) -> jax.Array:
        """image: [B, S, image_dim] (with pos_len: S = pos_len) -> [B, S, dim] (compute dtype)."""
        if self.pos_len:
            if image.shape[1] != self.pos_len:
                raise ValueError(
                    f'image tokens {image.shape}: this model adds positions to '
                    f'{self.pos_len} tokens (first and last frame features joined).'
                )
            image = image.astype(jnp.float32) + self.pos_embed[...]
        h = self.norm1(image).astype(self.dtype)
        h = self.proj_out(jax.nn.gelu(self.proj_in(h), approximate=False))
        return self.norm2(h).astype(self.dtype)


class ConditionEmbedder(nnx.Module):
    """Timestep -> temb (and its 6-way projection); text features -> model width."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        pdt = DTYPES[cfg.param_dtype]
        self.freq_dim = cfg.freq_dim
        self.time_embedder = layers.MLPEmbedder(
            cfg.freq_dim, cfg.dim, act='silu', rngs=rngs, in_axis='kv', param_dtype=pdt
        )
        self.time_proj = layers.linear(
            cfg.dim,
            6 * cfg.dim,
            ('embed', 'mod'),
            rngs=rngs,
            param_dtype=pdt,
            zero_init=cfg.zero_init,
        )
        self.text_embedder = layers.MLPEmbedder(
            cfg.text_dim,
            cfg.dim,
            act='gelu',
            rngs=rngs,
            in_axis='kv',
            dtype=DTYPES[cfg.dtype],
            param_dtype=pdt,
        )
        self.pooled = cfg.pooled_text
        if cfg.pooled_text:  # zero-initialised output: starts as the model without it
            self.pooled_text_1 = layers.linear(
                cfg.text_dim, cfg.dim, ('kv', 'embed'), rngs=rngs, param_dtype=pdt
            )
            self.pooled_text_2 = layers.linear(
                cfg.dim, cfg.dim, ('embed', 'embed_out'), rngs=rngs, param_dtype=pdt, zero_init=True
            )
        if cfg.image_dim:  # Wan 2.1 I2V; called by DiT.__call__ on the image features
            self.image_embedder = ImageEmbedder(
                cfg.image_dim,
                cfg.dim,
                pos_len=cfg.image_pos_len,
                rngs=rngs,
                dtype=DTYPES[cfg.dtype],
                param_dtype=pdt,
            )

    def __call__(self, timestep, context, context_mask=None):
        """timestep: [B] -> temb [B, D], temb6 [B, 6, D]; or per token [B, N] -> temb [B, N, D],
        temb6 [B, N, 6, D] (diffusers' `timestep.ndim == 2` path). Text features: [B, L, D]."""
        emb = layers.timestep_embedding(timestep.reshape(-1), self.freq_dim)
        temb = self.time_embedder(emb).reshape(*timestep.shape, -1)  # f32
        if self.pooled:
            c = context.astype(jnp.float32)
            m = (
                jnp.ones(c.shape[:2], jnp.float32)
                if context_mask is None
                else context_mask.astype(jnp.float32)
            )
            pooled = (c * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1.0)
            pooled = self.pooled_text_2(jax.nn.silu(self.pooled_text_1(pooled)))  # [B, D]
            temb = temb + (pooled[:, None] if timestep.ndim == 2 else pooled)
        temb6 = self.time_proj(jax.nn.silu(temb)).reshape(*timestep.shape, 6, -1)
        return temb, temb6, self.text_embedder(context)


class Embedded(NamedTuple):
    """What the blocks and the head take besides the tokens (`DiT.embed`), rows as the input's."""

    temb: jax.Array  # [B, D] time embedding (per token: [B, N, D]), float32
    temb6: jax.Array  # [B, 6, D] its modulation projection (per token: [B, N, 6, D])
    ctx: jax.Array  # [B, L, D] text features at model width
    context_mask: jax.Array | None  # [B, L]
    img: jax.Array | None  # [B, S, D] embedded image tokens (I2V) or None
    angles: jax.Array  # [N, head_dim / 2] RoPE angles of the token grid
    grid: tuple[int, int, int]  # the token grid (f, h, w): static
    text_kv: CrossKV | None = None  # [depth, B, L, H, hd] precomputed (`DiT.text_kv`) or None

    def rows(self, start, size: int) -> 'Embedded':
        """Rows start..start+size-1 of every per-row field (`start` may be traced)."""
        take = lambda a: None if a is None else jax.lax.dynamic_slice_in_dim(a, start, size, 0)
        take_kv = lambda a: jax.lax.dynamic_slice_in_dim(a, start, size, 1)  # [depth, B, ...]
        return self._replace(
            temb=take(self.temb),
            temb6=take(self.temb6),
            ctx=take(self.ctx),
            context_mask=take(self.context_mask),
            img=take(self.img),
            text_kv=None if self.text_kv is None else jax.tree.map(take_kv, self.text_kv),
        )


class DiT(nnx.Module):
    """velocity = DiT(x_t: [B, T, H, W, Cin], t: [B] in [0, 1], context: [B, L, text_dim]).

    t may also be per token, [B, N] with N = the token count (t, h, w order), as Wan 2.2 TI2V
    runs it: tokens of a conditioned first frame get t = 0 (same parameters, per-token adaLN)."""

    def __init__(self, cfg: DiTConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        dt, pdt = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
        self.patch_embedding = PatchEmbed(
            cfg.patch_size, cfg.in_channels, cfg.dim, rngs=rngs, dtype=dt, param_dtype=pdt
        )
        self.condition_embedder = ConditionEmbedder(cfg, rngs=rngs)

        @nnx.split_rngs(splits=cfg.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
        def make_blocks(r):
            return DiTBlock(cfg, rngs=r)

        self.blocks = make_blocks(rngs)
        self.norm_out = layers.LayerNorm(cfg.dim, eps=cfg.eps)
        self.proj_out = layers.linear(
            cfg.dim,
            cfg.out_channels * math.prod(cfg.patch_size),
            ('embed', None),
            rngs=rngs,
            dtype=dt,
            param_dtype=pdt,
            zero_init=cfg.zero_init,
        )
        init = _table_init(rngs, 2, cfg)
        self.scale_shift_table = nnx.Param(init, out_sharding=(None, None, 'norm'))

    def check_input(self, shape) -> tuple[int, int, int]:
        """Token grid for an input shape, or a ValueError naming the bad dimension."""
        if len(shape) != 5:
            raise ValueError(f'DiT input must be [B, T, H, W, C], got shape {tuple(shape)}.')
        _, t, h, w, c = shape
        if c != self.cfg.in_channels:
            raise ValueError(
                f'DiT input has {c} channels but model.in_channels={self.cfg.in_channels}.'
            )
        grid = []
        for name, n, p in zip(('frames', 'height', 'width'), (t, h, w), self.cfg.patch_size):
            if n % p:
                raise ValueError(
                    f'latent {name}={n} is not divisible by patch size {p}; use a '
                    f'multiple of {p} (patch_size={self.cfg.patch_size}).'
                )
            grid.append(n // p)
        return tuple(grid)

    def __call__(self, x, t, context, context_mask=None, skip=None, image=None, text_kv=None):
        """`skip` (optional, bool [B, depth]): per example, blocks that act as the identity (the
        weakened model of skip-layer guidance); None runs every block. `image` ([B, S, image_dim],
        I2V models only, model.image_dim > 0): CLIP image features, attended in every block's
        cross-attention through their own key/value projections. With model.causal_chunk > 0
        self-attention is block-causal over chunks of that many latent frames. `text_kv`:
        `text_kv(context, image)` computed beforehand (a sampler's steps share it): the blocks
        attend to it instead of projecting the text and image tokens again."""
        return self._forward(x, t, context, context_mask, skip, image, text_kv=text_kv)[0]

    def text_kv(self, context, image=None) -> CrossKV:
        """Every block's cross-attention keys/values of the text context [B, L, text_dim] (and
        I2V's image features [B, S, image_dim]): `CrossKV` with k, v [depth, B, L, H, hd] (and
        k_img, v_img [depth, B, S, H, hd]). They do not depend on x_t or t, so a sampler
        computes them once per call and passes them to every step (`__call__(text_kv=...)`);
        the result equals recomputing them (tests/models/test_text_kv_cache.py)."""
        cfg = self.cfg
        if (image is None) != (not cfg.image_dim):
            raise ValueError(
                f'model.image_dim={cfg.image_dim}: text_kv needs image= exactly when the DiT '
                'has image tokens (CLIP features [B, S, image_dim]).'
            )
        ctx = self.condition_embedder.text_embedder(context)
        img = None if image is None else self.condition_embedder.image_embedder(image)
        gdef, state = nnx.split(self.blocks)

        def one(block_state):
            block = nnx.merge(gdef, quantize_lib.dequantize(block_state))
            return block.attn2.cross_kv(ctx, img)

        return jax.lax.map(one, state)

    def chunk(self, x, t, context, context_mask=None, *, cache=None, frame_offset=0, image=None):
        """One step of a chunked rollout (causal models only): x [B, T, H, W, Cin] is the chunk
        (T a multiple of model.causal_chunk) whose first latent frame sits at absolute frame
        `frame_offset` (may be traced; RoPE positions are offset by it), attending to itself
        block-causally and to `cache` (`models/kv_cache.KVCache` of the past chunks, or None).
        Returns (velocity like x, `ChunkKV` of x's tokens in every block) so the caller can write
        the clean chunk into the cache (`kv_cache.write_chunk`)."""
        if not self.cfg.causal_chunk:
            raise ValueError(
                'DiT.chunk needs a causal model: set model.causal_chunk > 0 (latent frames per '
                'chunk).'
            )
        return self._forward(x, t, context, context_mask, None, image, cache, frame_offset)

    def _forward(
        self, x, t, context, context_mask, skip, image, cache=None, frame_offset=0, text_kv=None
    ):
        cfg = self.cfg
        h, e = self._embed(x, t, context, context_mask, skip, image, frame_offset)
        causal = None
        if cfg.causal_chunk:
            pt = cfg.patch_size[0]
            causal = ((cfg.causal_chunk // pt) * e.grid[1] * e.grid[2], cache)
        h, kv = self._run_blocks(
            h, e.ctx, context_mask, e.temb6, e.angles, skip, e.img, causal, text_kv=text_kv
        )
        return self.head(h, e), kv

    def embed(
        self, x, t, context, context_mask=None, image=None, text_kv=None
    ) -> tuple[jax.Array, 'Embedded']:
        """The DiT up to its first block: (tokens h [B, N, D], `Embedded`) for the same inputs as
        `__call__`; `run_blocks` and `head` finish it (`head(run_blocks(*embed(...)), e)` is `__call__`).
        Step caches (pipeline/step_cache.py) run the stack in parts this way."""
        h, e = self._embed(x, t, context, context_mask, None, image, 0)
        return h, e._replace(text_kv=text_kv)

    def run_blocks(self, h, e: 'Embedded', start: int = 0, stop: int | None = None):
        """h [B, N, D] through blocks start..stop-1 (static ints; stop None: the last) -> h."""
        stop = self.cfg.depth if stop is None else stop
        if not 0 <= start < stop <= self.cfg.depth:
            raise ValueError(f'blocks {start}..{stop} must satisfy 0 <= start < stop <= depth.')
        return self._run_blocks(
            h,
            e.ctx,
            e.context_mask,
            e.temb6,
            e.angles,
            None,
            e.img,
            None,
            layers=(start, stop),
            text_kv=e.text_kv,
        )[0]

    def _embed(self, x, t, context, context_mask, skip, image, frame_offset):
        cfg = self.cfg
        if (image is None) != (not cfg.image_dim):
            raise ValueError(
                f'model.image_dim={cfg.image_dim}: '
                + (
                    'this image-to-video DiT needs image= (CLIP features [B, S, image_dim]).'
                    if image is None
                    else 'this DiT takes no image features; drop image=.'
                )
            )
        if image is not None and (image.ndim != 3 or image.shape[-1] != cfg.image_dim):
            raise ValueError(
                f'image features have shape {tuple(image.shape)}; expected [B, S, {cfg.image_dim}].'
            )
        b, tt, hh, ww, _ = x.shape
        grid = self.check_input(x.shape)
        if skip is not None:
            skip = jnp.asarray(skip, bool)
            if skip.shape != (b, cfg.depth):
                raise ValueError(
                    f'skip has shape {skip.shape}; expected (batch, depth) = ({b}, {cfg.depth}).'
                )
        t = jnp.asarray(t)
        if t.ndim > 2 or (t.ndim == 2 and t.shape != (b, math.prod(grid))):
            raise ValueError(
                f'timesteps have shape {t.shape}; expected ({b},) or per token '
                f'({b}, {math.prod(grid)}) for the token grid {grid}.'
            )
        pt = cfg.patch_size[0]
        if cfg.causal_chunk and grid[0] % (cfg.causal_chunk // pt):
            raise ValueError(
                f'latent frames={tt} are not whole chunks of model.causal_chunk='
                f'{cfg.causal_chunk}; use a multiple of it.'
            )
        if cfg.causal_chunk:
            offset = (jnp.asarray(frame_offset) // pt, 0, 0)
            angles = rope.rope_angles(grid, cfg.head_dim, cfg.rope_theta, offset)
        else:
            angles = rope.rope_angles(grid, cfg.head_dim, cfg.rope_theta)
        h = self.patch_embedding(x)  # [B, N, D]
        h = constrain(h, ('act_batch', 'act_length', 'act_embed'))
        temb, temb6, ctx = self.condition_embedder(
            t.astype(jnp.float32) * cfg.timestep_scale, context, context_mask
        )
        img = None if image is None else self.condition_embedder.image_embedder(image)
        return h, Embedded(temb, temb6, ctx, context_mask, img, angles, grid)

    def head(self, h, e: 'Embedded'):
        """h [B, N, D] after the last block -> output [B, T, H, W, out_channels] (float32)."""
        cfg, temb, grid = self.cfg, e.temb, e.grid
        if temb.ndim == 3:  # per token: temb [B, N, D] -> shift, scale [B, N, D]
            mod = self.scale_shift_table[...][:, None] + temb[:, :, None]
            shift, scale = [p[:, :, 0] for p in jnp.split(mod, 2, axis=2)]
        else:
            shift, scale = jnp.split(self.scale_shift_table[...] + temb[:, None], 2, axis=1)
        h = layers.modulate(self.norm_out(h), shift, scale).astype(DTYPES[cfg.dtype])
        out = self.proj_out(h).astype(jnp.float32)
        pt, ph, pw = cfg.patch_size
        out = rearrange(
            out,
            'b (f h w) (pt ph pw c) -> b (f pt) (h ph) (w pw) c',
            f=grid[0],
            h=grid[1],
            w=grid[2],
            pt=pt,
            ph=ph,
            pw=pw,
        )
        return out

    def _run_blocks(
        self,
        h,
        ctx,
        ctx_mask,
        temb6,
        angles,
        skip=None,
        img=None,
        causal=None,
        layers=None,
        text_kv=None,
    ):
        """h [B, N, D] through every block (`layers` (start, stop): those alone) -> (h,
        ChunkKV | None). `causal`: (block_tokens, KVCache | None) for block-causal
        self-attention (the keys/values come back stacked [depth, B, N, H, hd]), or None for
        full attention. `text_kv` (`CrossKV` [depth, ...] from `text_kv`): the blocks'
        cross-attention keys/values, scanned with them. Quantized kernels (models/quantize.py)
        are dequantized one block at a time."""
        gdef, state = nnx.split(self.blocks)
        if text_kv is not None and text_kv.k.shape[:2] != (self.cfg.depth, h.shape[0]):
            raise ValueError(
                f'text_kv keys have shape {text_kv.k.shape}; expected [depth={self.cfg.depth}, '
                f'batch={h.shape[0]}, L, heads, head_dim] (DiT.text_kv of these rows).'
            )
        # skip [B, depth] -> [depth, B, 1, 1], scanned with the blocks
        flags = None if skip is None else jnp.transpose(skip)[:, :, None, None]
        depth = self.cfg.depth
        start, stop = (0, depth) if layers is None else layers
        cache = None if causal is None else causal[1]
        past_all = None if cache is None else (cache.k, cache.v)
        stacked = (state, flags, past_all, text_kv)
        # A part of the stack (step caches) scans the layer indices and reads each layer's slice
        # inside the loop: slicing the stacked arrays first (a[start:stop]) copies every weight
        # of those layers on each call (5.5 GB for 29 of Wan 1.3B's 30 float32 blocks).
        part = (start, stop) != (0, depth)

        def body(carry, xs):
            if part:
                xs = jax.tree.map(lambda a: a[xs], stacked)
            block_state, flag, past, ckv = xs
            carry = checkpoint_name(carry, 'block_input')  # what remat 'offload' keeps on the host
            block = nnx.merge(gdef, quantize_lib.dequantize(block_state))
            if causal is None:
                out = block(carry, ctx, ctx_mask, temb6, angles, img, cross_kv=ckv)
                kv = None
            else:
                layer_past = None if past is None else (*past, cache.valid)
                out, kv = block(
                    carry, ctx, ctx_mask, temb6, angles, img, (causal[0], layer_past), ckv
                )
            return (out if flag is None else jnp.where(flag, carry, out)), kv

        policy = REMAT_POLICIES[self.cfg.remat]
        if self.cfg.remat != 'none':
            body = jax.checkpoint(body, policy=policy, prevent_cse=not self.cfg.scan_layers)
        if self.cfg.scan_layers:
            h, kv = jax.lax.scan(body, h, jnp.arange(start, stop) if part else stacked)
        else:
            kvs = []
            for i in range(start, stop):
                h, kv = body(h, i if part else jax.tree.map(lambda a: a[i], stacked))
                kvs.append(kv)
            kv = None if causal is None else jax.tree.map(lambda *a: jnp.stack(a), *kvs)
        return h, (None if kv is None else kv_cache.ChunkKV(*kv))


def dit_config(config) -> DiTConfig:
    """The DiT of a run config fed precomputed text features (objective 'flow_context', Wan
    2.1: `train/objectives/flow_context.py`): config.latent_channels in and out, adapters per
    config.lora."""
    c = int(config.latent_channels)
    return DiTConfig.from_config(
        dict(
            config.model.to_dict(),
            in_channels=c,
            out_channels=c,
            lora=lora_lib.config_of(config).layout(),
        )
    )


def build_model(config, rngs: nnx.Rngs) -> DiT:
    return DiT(dit_config(config), rngs=rngs)
