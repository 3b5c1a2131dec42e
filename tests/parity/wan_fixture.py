"""A tiny random Wan 2.1 folder in the diffusers layout, for conversion and pipeline round trips.

`make_tiny_wan_folder(path)` saves a `diffusers.WanPipeline` built from `configs/wan21.py:tiny`
(random weights, seeded) with `save_pretrained`, so `path` looks exactly like a hub download:

  model_index.json
  transformer/   config.json + diffusion_pytorch_model*.safetensors  (WanTransformer3DModel)
  vae/           config.json + diffusion_pytorch_model.safetensors   (AutoencoderKLWan)
  text_encoder/  config.json + model.safetensors                     (UMT5EncoderModel)
  tokenizer/     tokenizer.json, tokenizer_config.json, ...          (a 70-piece T5 tokenizer)
  scheduler/     scheduler_config.json                               (UniPC, flow prediction)

Wan 2.2 options: `two_experts=True` adds `transformer_2/` (a second random DiT, the A14B
low-noise expert) with `boundary_ratio`; `expand_timesteps=True` marks the folder as TI2V (per-token
timesteps, first-frame conditioning); both land in model_index.json as diffusers writes them.

`load_reference_pipeline(path)` gives the diffusers `WanPipeline` over the same weights (plain
`WanPipeline.from_pretrained` would need the `accelerate` package), so a test can compare a
sora_jax sample with the reference one. Needs torch, diffusers, transformers and sentencepiece (the [test] extra).

`make_tiny_wan_folder(path, i2v=True)` writes the image-to-video folder of
`configs/wan21.py:tiny_i2v` instead (a `diffusers.WanImageToVideoPipeline`: the transformer with
image tokens and 36-style input channels, plus `image_encoder/` (a tiny transformers
`CLIPVisionModel`) and `image_processor/` (CLIP's, PIL backend: torchvision is not installed));
`load_reference_pipeline(path, image_to_video=True)` gives its `WanImageToVideoPipeline`.
"""

from __future__ import annotations

import os
import tempfile

from sora_jax import config_files

CONFIG_PATH = 'configs/wan21.py'
WAN22_CONFIG_PATH = 'configs/wan22.py'
SENTENCES = (
    'A red circle moves to the left across a blue background.',
    'Un cuadrado verde gira lentamente sobre un fondo negro.',
    'Two yellow triangles bounce up and down, then stop.',
    'A cat and a dog baking a cake together in a kitchen.',
)


def tiny_config(arg: str = 'tiny', path: str = CONFIG_PATH):
    """`configs/wan21.py:tiny`; `arg`, `path`: another arg and config file, e.g. 'tiny_i2v', or
    'tiny_ti2v' of WAN22_CONFIG_PATH."""
    return config_files.load(f'{path}:{arg}')


def diffusers_kwargs(c) -> dict:
    """Our config's model / vae / text sections as diffusers / transformers constructor kwargs."""
    m, v, t = c.model, c.vae, c.text
    image = {}
    if m.get('image_dim', 0):
        e = c.image_encoder
        image = {
            'image_encoder': dict(
                image_size=e.image_size,
                patch_size=e.patch_size,
                hidden_size=e.hidden_size,
                intermediate_size=e.intermediate_size,
                num_hidden_layers=e.num_hidden_layers,
                num_attention_heads=e.num_attention_heads,
                layer_norm_eps=e.layer_norm_eps,
                hidden_act=e.hidden_act,
                projection_dim=e.hidden_size,
            )
        }
    return image | {
        'transformer': dict(
            patch_size=tuple(m.patch_size),
            num_attention_heads=m.num_heads,
            attention_head_dim=m.dim // m.num_heads,
            in_channels=m.in_channels,
            out_channels=m.out_channels,
            text_dim=m.text_dim,
            freq_dim=m.freq_dim,
            ffn_dim=m.ffn_dim,
            num_layers=m.depth,
            cross_attn_norm=m.cross_attn_norm,
            qk_norm='rms_norm_across_heads',
            eps=m.eps,
            **(
                {'image_dim': m.image_dim, 'added_kv_proj_dim': m.dim}
                if m.get('image_dim', 0)
                else {}
            ),
            # FLF2V: the learned positions of the [first, last] image tokens
            **({'pos_embed_seq_len': m.image_pos_len} if m.get('image_pos_len', 0) else {}),
        ),
        'vae': dict(
            base_dim=v.base_dim,
            z_dim=v.z_dim,
            dim_mult=list(v.dim_mult),
            num_res_blocks=v.num_res_blocks,
            attn_scales=list(v.attn_scales),
            temperal_downsample=list(v.temperal_downsample),
            latents_mean=list(v.latents_mean),
            latents_std=list(v.latents_std),
            **_wan22_vae_kwargs(v),
        ),
        'text_encoder': dict(
            vocab_size=t.vocab_size,
            d_model=t.d_model,
            d_kv=t.d_kv,
            num_heads=t.num_heads,
            d_ff=t.d_ff,
            num_layers=t.num_layers,
            relative_attention_num_buckets=t.num_buckets,
            relative_attention_max_distance=t.max_distance,
            layer_norm_epsilon=t.eps,
            feed_forward_proj='gated-gelu',
            dropout_rate=0.0,
            tie_word_embeddings=False,
        ),
    }


def _wan22_vae_kwargs(v) -> dict:
    """The Wan 2.2 VAE's extra `AutoencoderKLWan` kwargs (residual blocks, patches), if set."""
    if not v.get('is_residual', False):
        return {}
    return dict(
        is_residual=True,
        patch_size=v.patch_size,
        decoder_base_dim=v.decoder_base_dim,
        in_channels=v.in_channels,
        out_channels=v.out_channels,
        scale_factor_spatial=2 ** (len(v.dim_mult) - 1) * v.patch_size,
        scale_factor_temporal=2 ** sum(v.temperal_downsample),
    )


def _tokenizer(vocab_size: int):
    import sentencepiece as spm
    import transformers

    with tempfile.TemporaryDirectory() as d:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(SENTENCES) * 20),
            model_prefix=os.path.join(d, 'spiece'),
            vocab_size=60,
            model_type='unigram',
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            character_coverage=1.0,
            minloglevel=2,
        )
        tok = transformers.T5Tokenizer.from_pretrained(d, extra_ids=10)
    if len(tok) > vocab_size:
        raise ValueError(f'tokenizer has {len(tok)} pieces > text.vocab_size={vocab_size}.')
    return tok


def make_tiny_wan_folder(
    path: str,
    seed: int = 0,
    *,
    two_experts: bool = False,
    boundary_ratio: float | None = None,
    expand_timesteps: bool = False,
    config=None,
    i2v: bool = False,
) -> str:
    """Writes the tiny random Wan folder (see the module docstring) into `path`; returns `path`.
    `config`: the sizes (default `configs/wan21.py:tiny`, or `tiny_i2v` with `i2v`; e.g.
    `configs/wan22.py:tiny_ti2v`). `i2v`: a Wan 2.1 image-to-video folder (CLIP image encoder)."""
    import diffusers
    import torch
    import transformers

    c = config if config is not None else tiny_config('tiny_i2v' if i2v else 'tiny')
    kw = diffusers_kwargs(c)
    torch.set_num_threads(1)  # tiny modules: threads only add contention on small CI runners
    torch.manual_seed(seed)
    transformer = diffusers.WanTransformer3DModel(**kw['transformer']).eval()
    vae = diffusers.AutoencoderKLWan(**kw['vae']).eval()
    text_encoder = transformers.UMT5EncoderModel(
        transformers.UMT5Config(**kw['text_encoder'])
    ).eval()
    transformer_2 = (
        diffusers.WanTransformer3DModel(**kw['transformer']).eval() if two_experts else None
    )
    extra = {}
    if i2v and 'image_encoder' in kw:  # Wan 2.1 I2V; Wan 2.2 I2V-A14B has no image tokens
        extra['image_encoder'] = transformers.CLIPVisionModel(
            transformers.CLIPVisionConfig(**kw['image_encoder'])
        ).eval()
        size = c.image_encoder.image_size
        extra['image_processor'] = transformers.CLIPImageProcessorPil(
            size={'shortest_edge': size}, crop_size={'height': size, 'width': size}
        )
    with torch.no_grad():  # randomise the one/zero-initialised norms and biases as well
        for model in (
            [transformer, vae, text_encoder]
            + ([transformer_2] if two_experts else [])
            + ([extra['image_encoder']] if 'image_encoder' in extra else [])
        ):
            for name, p in model.named_parameters():
                if 'norm' in name or name.endswith('gamma'):
                    p.copy_(
                        1.0 + 0.3 * torch.randn_like(p)
                        if not name.endswith('bias')
                        else 0.3 * torch.randn_like(p)
                    )
    scheduler = diffusers.UniPCMultistepScheduler(
        prediction_type='flow_prediction',
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=c.sample.shift,
    )
    cls = diffusers.WanImageToVideoPipeline if i2v else diffusers.WanPipeline
    pipe = cls(
        tokenizer=_tokenizer(c.text.vocab_size),
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        transformer=transformer,
        transformer_2=transformer_2,
        boundary_ratio=boundary_ratio,
        expand_timesteps=expand_timesteps,
        **extra,
    )
    pipe.save_pretrained(path)
    return path


def load_reference_pipeline(path: str, image_to_video: bool = False):
    """`diffusers.WanPipeline` over a Wan folder, without `accelerate` (`image_to_video`: the
    `WanImageToVideoPipeline` over the same folder: Wan 2.1 I2V with its CLIP image encoder when
    the folder has one, or Wan 2.2 TI2V's image conditioning). `transformer_2`,
    `boundary_ratio` and `expand_timesteps` follow the folder's model_index.json.

    `WanPipeline.from_pretrained` needs the `accelerate` package for `WanTransformer3DModel`
    (`_keep_in_fp32_modules` forces low_cpu_mem_usage, which needs accelerate); the [test] extra
    does not install it, so the diffusers models are built from their config and filled here.
    """
    import glob

    import diffusers
    import transformers
    from safetensors.torch import load_file

    def diffusers_model(cls, sub):
        folder = os.path.join(path, sub)
        model = cls.from_config(cls.load_config(folder))
        state = {}
        for f in sorted(glob.glob(os.path.join(folder, '*.safetensors'))):
            state.update(load_file(f))
        model.load_state_dict(state, strict=True)
        return model.eval()

    import json

    with open(os.path.join(path, 'model_index.json')) as f:
        index = json.load(f)
    extra = {}
    if image_to_video:
        # pipeline_wan_i2v's basic_clean calls ftfy unguarded (NameError without the package);
        # pipeline_wan's is the same function with the `is_ftfy_available()` guard.
        from diffusers.pipelines.wan import pipeline_wan, pipeline_wan_i2v

        pipeline_wan_i2v.basic_clean = pipeline_wan.basic_clean
        if os.path.isdir(os.path.join(path, 'image_encoder')):
            extra = dict(
                image_encoder=transformers.CLIPVisionModel.from_pretrained(
                    os.path.join(path, 'image_encoder')
                ).eval(),
                image_processor=transformers.CLIPImageProcessorPil.from_pretrained(
                    os.path.join(path, 'image_processor')
                ),
            )
    cls = diffusers.WanImageToVideoPipeline if image_to_video else diffusers.WanPipeline
    second = os.path.isdir(os.path.join(path, 'transformer_2'))
    return cls(
        **extra,
        tokenizer=transformers.AutoTokenizer.from_pretrained(os.path.join(path, 'tokenizer')),
        text_encoder=transformers.UMT5EncoderModel.from_pretrained(
            os.path.join(path, 'text_encoder')
        ).eval(),
        vae=diffusers_model(diffusers.AutoencoderKLWan, 'vae'),
        scheduler=diffusers.UniPCMultistepScheduler.from_pretrained(path, subfolder='scheduler'),
        transformer=diffusers_model(diffusers.WanTransformer3DModel, 'transformer'),
        transformer_2=(
            diffusers_model(diffusers.WanTransformer3DModel, 'transformer_2') if second else None
        ),
        boundary_ratio=index.get('boundary_ratio'),
        expand_timesteps=bool(index.get('expand_timesteps', False)),
    )
