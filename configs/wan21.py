"""Wan 2.1 text- and image-to-video (Apache-2.0 open weights) loaded into sora_jax.

Args (`--config=configs/wan21.py:ARG`):
  t2v_1.3b   Wan2.1-T2V-1.3B: DiT 1,418,996,800 params (30 blocks x 1536), 480x832, flow shift 3.0.
  t2v_14b    Wan2.1-T2V-14B: DiT 14,288,491,584 params (40 blocks x 5120), 720x1280, flow shift 5.0.
             Append ',480p' (`t2v_14b,480p`) for 480x832 with shift 3.0.
  i2v_14b_480p  Wan2.1-I2V-14B-480P: image-to-video DiT 16,394,878,784 params (the 14B layout
             with 36 input channels and CLIP image tokens), 480x832, shift 3.0, plus its CLIP
             ViT-H/14 image encoder (630,766,080 params, `image_encoder` below).
  i2v_14b_720p  Wan2.1-I2V-14B-720P: the same layout, other weights; 720x1280, shift 5.0.
  tiny       a random tiny Wan (same layout, a few hundred KB) that the tests build with
             `tests/parity/wan_fixture.py:make_tiny_wan_folder` and convert; not a real model.
  tiny_i2v   the same, image-to-video (tests/parity/test_wan_i2v_parity.py).
  t2v_14b,720p,v5p8   training recipe for 14B at 720x1280x81 on a v5p-8 (4 chips, one clip a
             step); t2v_1.3b,720p,v5e8 for 1.3B at 720p on a v5e-8 (8 chips, 2 clips): see
             _slice_recipe and docs/tpu_memory.md.
Both real sizes share the UMT5-XXL text encoder (5,680,910,336 params) and the causal video VAE
(126,892,531 params). Parameter counts are `DiTConfig.num_params()`, equal to diffusers'
`WanTransformer3DModel` built on the meta device (tests/configs/test_configs_wan21.py).

Convert the diffusers weights once (streams tensor by tensor; bf16 stays bf16), then sample:

  huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir /data/Wan2.1-T2V-1.3B-Diffusers
  python experiments/convert_wan.py --src=/data/Wan2.1-T2V-1.3B-Diffusers --dst=checkpoints/wan21_t2v_1.3b
  python experiments/sample.py --checkpoint=checkpoints/wan21_t2v_1.3b \
      --prompt="A cat and a dog baking a cake together in a kitchen." --out=outputs/wan_cat.mp4 \
      --num_frames=81 --height=480 --width=832 --steps=50 --guidance_scale=5.0 --seed=0

  (14B: Wan-AI/Wan2.1-T2V-14B-Diffusers -> checkpoints/wan21_t2v_14b, --height=720 --width=1280.)
`sora_jax.convert.checkpoint.load_wan(DST)` returns (text_encoder, tokenizer, transformer, vae,
configs) for any other script.

Meshes measured ahead of time (`mesh.shape` = (data, fsdp, tensor, sequence); per-chip memory
from XLA's TPU compiler via experiments/aot.py, no TPU used; every row with its command in
docs/aot/*.json, the table in docs/aot/table.md, read in docs/tpu.md):
  train 14B, 720x1280x81 (75,600 tokens/clip), v5p-64: (1, 16, 1, 2), 16 clips, splash, remat
        'full': 61.6 of 95 GiB per chip (35% free); (1, 32, 1, 1) with 32 clips: 89.3 GiB (6%).
  train 14B, 480x832x81 (32,760 tokens/clip), v5p-64: (1, 32, 1, 1), 32 clips: 45.2 GiB.
  train 1.3B, 480p, v5p-8: (1, 4, 1, 1), 4 clips: 18.2 GiB. v5e-8: (1, 4, 1, 2), 4 clips:
        13.3 of 14.9 GiB (10% free); (1, 8, 1, 1) with 8 clips needs 14.91 GiB: does not fit.
  sample 14B, 720p, v5p-8: (1, 1, 1, 4) (sequence-parallel, weights replicated): 35.1 GiB.
  sample 1.3B, 480p, v5e-8: (1, 1, 1, 8): 3.8 of 14.9 GiB.
XLA attention at 14B 720p on v5p-8 needs 456.6 GiB of temporaries per chip (refused); splash fits.
"""

import ml_collections as mlc

from sora_jax.models.vae import WAN21_LATENTS_MEAN, WAN21_LATENTS_STD  # the one source

# Wan's own default negative prompt (wan/configs/shared_config.py `sample_neg_prompt`).
WAN_NEGATIVE_PROMPT = (
    '色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，'
    'JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，'
    '手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走'
)
# The English version used in diffusers' WanPipeline example (pipeline_wan.py).
WAN_NEGATIVE_PROMPT_EN = (
    'Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, '
    'images, static, overall gray, worst quality, low quality, JPEG compression residue, ugly, '
    'incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, '
    'misshapen limbs, fused fingers, still picture, messy background, three legs, many people in '
    'the background, walking backwards'
)

_SIZES = {  # arg -> (num_heads, ffn_dim, depth, hub id)
    't2v_1.3b': (12, 8960, 30, 'Wan-AI/Wan2.1-T2V-1.3B-Diffusers'),
    't2v_14b': (40, 13824, 40, 'Wan-AI/Wan2.1-T2V-14B-Diffusers'),
}
_I2V = {  # arg -> (resolution, hub id): two checkpoints of one architecture
    'i2v_14b_480p': ('480p', 'Wan-AI/Wan2.1-I2V-14B-480P-Diffusers'),
    'i2v_14b_720p': ('720p', 'Wan-AI/Wan2.1-I2V-14B-720P-Diffusers'),
}
_RESOLUTIONS = {'480p': (480, 832, 3.0), '720p': (720, 1280, 5.0)}  # -> (H, W, flow shift)


def get_config(arg: str = 't2v_1.3b') -> mlc.ConfigDict:
    if arg.startswith('lora_'):  # lora_1.3b, lora_14b, lora_tiny: see _lora_config
        return _lora_config(arg)
    if arg.count(',') == 2:  # t2v_14b,720p,v5p8 / t2v_1.3b,720p,v5e8: a slice's recipe
        return _slice_recipe(arg)
    name, _, res = arg.partition(',')
    if name not in (*_SIZES, *_I2V, 'tiny', 'tiny_i2v'):
        raise ValueError(
            f'configs/wan21.py: unknown arg {arg!r}; use t2v_1.3b, t2v_14b '
            '(optionally ",480p" / ",720p"), i2v_14b_480p, i2v_14b_720p, tiny, '
            'tiny_i2v, or lora_1.3b / lora_14b / lora_tiny.'
        )
    if name in _I2V:
        if res and res != _I2V[name][0]:
            raise ValueError(
                f'configs/wan21.py: {name} is a {_I2V[name][0]} checkpoint; drop '
                f'",{res}" from {arg!r}.'
            )
        res = _I2V[name][0]
    res = res or ('720p' if name == 't2v_14b' else '480p')
    if res not in _RESOLUTIONS:
        raise ValueError(f'configs/wan21.py: resolution {res!r} in {arg!r}; use 480p or 720p.')
    c = mlc.ConfigDict()
    c.seed = 0  # every random draw folds from this
    c.hf_id = _SIZES.get(name, (None,) * 4)[3] or _I2V.get(name, ('', ''))[1]  # hub repo
    c.checkpoint = (
        f'checkpoints/wan21_{name}'  # converted folder (experiments/convert_wan.py --dst)
    )

    c.model = mlc.ConfigDict()  # sora_jax.models.dit.DiTConfig
    c.model.patch_size = (1, 2, 2)  # (t, h, w) patch over latents
    c.model.in_channels = 16  # latent channels in (= vae.z_dim)
    c.model.out_channels = 16  # velocity channels out
    c.model.dim = 1536  # width = num_heads * 128
    c.model.num_heads = 12  # attention heads (head dim 128)
    c.model.ffn_dim = 8960  # MLP hidden width
    c.model.depth = 30  # blocks
    c.model.text_dim = 4096  # text embedding width (= text.d_model)
    c.model.freq_dim = 256  # sinusoidal timestep features
    c.model.eps = 1e-6  # norm epsilon
    c.model.cross_attn_norm = True  # affine LayerNorm before cross-attention
    c.model.rope_theta = 10000.0  # RoPE base
    c.model.timestep_scale = 1000.0  # t in [0, 1] -> Wan timesteps in [0, 1000]
    c.model.attention = 'auto'  # auto | xla | cudnn | chunked | splash
    c.model.attention_chunk = 512  # query/key chunk of the 'chunked' kernel
    c.model.dtype = 'bfloat16'  # compute dtype (Wan runs its DiT in bf16)
    c.model.param_dtype = 'bfloat16'  # weights as loaded
    c.model.scan_layers = True  # lax.scan over blocks (compile time flat in depth)
    c.model.remat = 'none'  # none | full | dots | dots_all (training only)
    c.model.causal_chunk = 0  # >0: block-causal chunks of this many latent frames (CausVid: 3)

    c.vae = mlc.ConfigDict()  # sora_jax.models.vae.VAEConfig (= diffusers AutoencoderKLWan)
    c.vae.base_dim = 96  # channels of the first level
    c.vae.z_dim = 16  # latent channels
    c.vae.dim_mult = (1, 2, 4, 4)  # channel multiplier per level
    c.vae.num_res_blocks = 2  # residual blocks per encoder level (+1 in the decoder)
    c.vae.attn_scales = ()  # scales with encoder attention (none in Wan 2.1)
    c.vae.temperal_downsample = (False, True, True)  # per level: also halve time (4x in total)
    c.vae.dropout = 0.0  # dropout in residual blocks (training only)
    c.vae.latents_mean = WAN21_LATENTS_MEAN  # per-channel latent mean (diffusion space shift)
    c.vae.latents_std = WAN21_LATENTS_STD  # per-channel latent std (diffusion space scale)
    c.vae.in_channels = 3  # video channels in
    c.vae.out_channels = 3  # video channels out
    c.vae.tile_sample_min_size = 256  # tile size in pixels for tiled encode/decode
    c.vae.tile_sample_stride = 192  # tile stride in pixels (overlap = size - stride)
    c.vae.dtype = 'float32'  # VAE param dtype at load (Wan decodes in float32)

    c.text = mlc.ConfigDict()  # sora_jax.models.umt5.UMT5Config (umt5-xxl encoder)
    c.text.vocab_size = 256384  # rows of the token table
    c.text.d_model = 4096  # width (= model.text_dim)
    c.text.d_kv = 64  # per-head width
    c.text.num_heads = 64  # attention heads
    c.text.d_ff = 10240  # gated-GELU FFN width
    c.text.num_layers = 24  # encoder blocks (each with its own bias table)
    c.text.num_buckets = 32  # relative position buckets
    c.text.max_distance = 128  # distances >= this share the last bucket
    c.text.eps = 1e-6  # RMS norm epsilon
    c.text.dtype = 'bfloat16'  # compute dtype (Wan: t5_dtype bf16)
    c.text.param_dtype = 'bfloat16'  # weights as loaded
    c.text.max_length = 512  # tokens, padded/truncated (Wan text_len; zeroed past the end)

    height, width, shift = _RESOLUTIONS[res]
    c.sample = mlc.ConfigDict()
    c.sample.sampler = 'unipc'  # UniPC multistep, flow prediction (Wan's solver)
    c.sample.steps = 50  # sampling steps
    c.sample.guidance_scale = 5.0  # classifier-free guidance
    c.sample.shift = shift  # flow shift: 3.0 at 480p, 5.0 at 720p
    c.sample.text_kv_cache = True  # cross-attention K/V of the text once per call, not per step
    c.sample.timestep_quantization = 1000  # DiT sees int(1000 t), as Wan / diffusers' UniPC pass it
    c.sample.cache = 'none'  # step cache: none | magcache | firstblock | taylorseer
    c.sample.cache_threshold = None  # its threshold (None: 0.06 magcache, 0.05 firstblock)
    c.sample.cache_mag_ratios = ()  # magcache: this model's calibrated magnitude ratios
    c.sample.num_frames = 81  # frames (1 + 4k; 81 -> 21 latent frames)
    c.sample.height = height  # pixels (multiple of 16)
    c.sample.width = width  # pixels (multiple of 16)
    c.sample.fps = 16  # frames per second of written videos
    c.sample.negative_prompt = (
        WAN_NEGATIVE_PROMPT  # Wan's default (English: WAN_NEGATIVE_PROMPT_EN;
    )
    # diffusers' WanPipeline defaults to '')

    c.mesh = mlc.ConfigDict()
    c.mesh.shape = (1, 1, 1, -1)  # (data, fsdp, tensor, sequence); -1 = the remaining devices
    c.mesh.rules = ()  # ((logical, mesh axis), ...) overrides of parallel/mesh.py

    # Training (the step experiments/aot.py --task=train compiles; objectives/flow_context.py).
    c.objective = 'flow_context'  # DiT on latents + precomputed UMT5 features
    c.latent_channels = 16  # = vae.z_dim
    c.flow = mlc.ConfigDict()
    c.flow.timestep_sampling = 'logit_normal'  # logit_normal | uniform
    c.flow.logit_mean = 0.0  # logit-normal location
    c.flow.logit_std = 1.0  # logit-normal scale
    c.flow.shift = shift  # training timestep shift (as sampling)
    c.flow.text_dropout = 0.1  # probability of zeroed text features (for CFG)
    c.flow.prediction = 'velocity'  # the DiT predicts velocity
    c.train = mlc.ConfigDict()
    c.train.num_steps = 1000  # optimizer steps
    c.train.batch_size = 8  # global batch (clips)
    c.train.grad_accum_steps = 1  # micro-batches per step
    c.train.learning_rate = 1e-5  # peak LR (fine-tuning)
    c.train.min_lr_ratio = 0.1  # final LR / peak
    c.train.warmup_steps = 100  # linear warmup
    c.train.weight_decay = 0.01  # AdamW
    c.train.b1 = 0.9  # AdamW
    c.train.b2 = 0.999  # AdamW
    c.train.grad_clip = 1.0  # global-norm clip
    c.train.ema_decay = 0.999  # EMA of params
    c.train.param_dtype = 'float32'  # master weights when training (replaces model.param_dtype)
    c.train.remat = 'full'  # remat policy when training (replaces model.remat)
    c.train.mu_dtype = ''  # AdamW first moment: '' (as the params) | bfloat16 (train/state.py)
    c.train.nu_dtype = ''  # AdamW second moment: '' | bfloat16
    c.train.ema = 'device'  # EMA of the params: device | host (pinned host memory) | off
    c.train.optimizer_memory = 'device'  # AdamW moments between steps: device | host
    c.train.log_every = 50  # steps between logged scalars
    c.train.checkpoint_every = 500  # steps between checkpoints

    if name == 't2v_14b' or name in _I2V:
        c.model.num_heads, c.model.ffn_dim, c.model.depth = _SIZES['t2v_14b'][:3]
        c.model.dim = 128 * c.model.num_heads
    elif name in ('tiny', 'tiny_i2v'):
        c.model.dim, c.model.num_heads, c.model.ffn_dim, c.model.depth = 24, 2, 48, 2
        c.model.in_channels = c.model.out_channels = c.latent_channels = 4
        c.model.text_dim = 32
        c.model.freq_dim = 32
        c.model.dtype = c.model.param_dtype = 'float32'
        c.vae.base_dim, c.vae.z_dim, c.vae.num_res_blocks = 4, 4, 1
        c.vae.dim_mult = (1, 2, 2, 2)  # keeps Wan's 8x space / 4x time
        c.vae.latents_mean = (0.1, -0.2, 0.05, 0.3)
        c.vae.latents_std = (1.2, 0.8, 1.5, 0.9)
        c.vae.tile_sample_min_size, c.vae.tile_sample_stride = 32, 24
        c.text.vocab_size, c.text.d_model, c.text.d_kv, c.text.num_heads = 128, 32, 8, 4
        c.text.d_ff, c.text.num_layers, c.text.num_buckets, c.text.max_distance = 48, 2, 8, 16
        c.text.dtype = c.text.param_dtype = 'float32'
        c.text.max_length = 32
        c.sample.steps, c.sample.num_frames, c.sample.height, c.sample.width = 4, 5, 32, 32
        c.checkpoint = ''
    if name in _I2V or name == 'tiny_i2v':
        _image_to_video(c, tiny=name == 'tiny_i2v')
    return c


def _image_to_video(c: mlc.ConfigDict, tiny: bool) -> None:
    """Wan 2.1 I2V: noise + 4 mask channels (one per frame of a latent frame) + the VAE latents
    of [image, zeros...] in (2 z_dim + 4 channels), CLIP image tokens in every cross-attention.
    Sample with `TextToVideo(..., mode='i2v', image=...)` (or sample.py --mode=i2v --image=...)."""
    c.model.in_channels = 2 * c.latent_channels + 4  # 36: [noise, mask, image latents]
    c.model.image_dim = 1280  # CLIP ViT-H/14 width (= image_encoder.hidden_size)
    c.image_encoder = mlc.ConfigDict()  # sora_jax.models.clip_vision.CLIPVisionConfig
    c.image_encoder.image_size = 224  # input pixels (square; CLIPImageProcessor crop)
    c.image_encoder.patch_size = 14  # 16 x 16 patches + [CLS] = 257 image tokens
    c.image_encoder.hidden_size = 1280  # width
    c.image_encoder.intermediate_size = 5120  # MLP hidden width
    c.image_encoder.num_hidden_layers = 32  # blocks (Wan reads the output of block 31)
    c.image_encoder.num_attention_heads = 16  # heads
    c.image_encoder.layer_norm_eps = 1e-5  # LayerNorm epsilon
    c.image_encoder.hidden_act = 'gelu'  # exact GELU
    if tiny:
        c.model.image_dim = c.image_encoder.hidden_size = 16
        c.image_encoder.image_size, c.image_encoder.patch_size = 32, 8
        c.image_encoder.intermediate_size, c.image_encoder.num_hidden_layers = 24, 2
        c.image_encoder.num_attention_heads = 2
        c.text.max_length = 512  # diffusers' I2V attention splits off the last 512 tokens as text


def _lora_config(arg: str) -> mlc.ConfigDict:
    """`lora_1.3b` / `lora_14b` (optionally ',480p' / ',720p') / `lora_tiny`: LoRA fine-tuning of a
    converted Wan 2.1 folder (`checkpoint`) on a folder of your clips (`data.folder`, with
    captions.jsonl). Its VAE encodes the clips once into a latent cache, its UMT5 encodes every
    caption once (`sora_jax/train/wan_frozen.py`), its DiT is the frozen base of the adapters
    (`lora.base`, default = `checkpoint`). docs/lora.md walks it through: convert, train,
    export, sample. Rank 32 on every block projection:
    43,745,280 adapter params over the frozen 1.3B DiT (lora_14b: 153,354,240), counted with
    nnx.eval_shape; lora_tiny is for tests/train/test_wan_lora.py.

      python experiments/train.py --config=configs/wan21.py:lora_1.3b --workdir=workdirs/wan_lora \\
          --config.checkpoint=checkpoints/wan21_t2v_1.3b --config.data.folder=DIR
    """
    size, _, res = arg[len('lora_') :].partition(',')
    name = 'tiny' if size == 'tiny' else f't2v_{size}'
    if name not in (*_SIZES, 'tiny'):
        raise ValueError(
            f'configs/wan21.py: unknown arg {arg!r}; use lora_1.3b, lora_14b '
            '(optionally ",480p" / ",720p") or lora_tiny.'
        )
    c = get_config(name + (f',{res}' if res else ''))
    c.objective = 'flow_context'  # the DiT on latents + UMT5 features of the captions
    c.autoencoder = 'none'  # unused: the VAE is the converted folder's
    c.latent_mean = c.latent_std = ()  # unused: latents are normalised by vae.latents_mean/std
    c.model.remat = 'full'  # recompute each block in the backward pass

    c.data = mlc.ConfigDict()  # a folder of videos (sora_jax/data/builders/video_folder.py)
    c.data.name = 'folder'  # your clips
    c.data.folder = ''  # directory of mp4/webm/gif files + captions.jsonl
    c.data.captions = ''  # its captions.jsonl / .csv (default: inside the folder)
    c.data.data_dir = 'data_cache'  # tfds build, latent cache and caption features go here
    c.data.staging_dir = ''  # local mirror of a gs:// data_dir ('': ~/.cache/sora_jax/data)
    c.data.frame_stride = 1  # keep every n-th frame of the videos
    c.data.validation_fraction = 0.0  # clips held out for evaluation
    c.data.allowed_licenses = ()  # clips must carry one of these licenses; (): any
    c.data.exclude = ''  # opt-out file: creators / file names / sources, one a line
    c.data.num_frames = 33  # T of each clip (1 + 4k: 33 -> 9 latent frames)
    c.data.height = c.sample.height  # H (multiple of 16)
    c.data.width = c.sample.width  # W (multiple of 16)
    c.data.sizes = ()  # ((T, H, W), ...) size buckets; overrides the three above
    c.data.size_weights = ()  # relative frequency of each size bucket (default uniform)
    c.data.spanish_prob = 0.0  # probability of the Spanish caption (if the folder has one)
    c.data.worker_count = 0  # grain worker processes

    c.lora = mlc.ConfigDict()  # sora_jax/train/lora.py
    c.lora.rank = 32  # adapter rank
    c.lora.alpha = 32.0  # scale = alpha / rank
    c.lora.targets = ('attn1.*', 'attn2.*', 'ffn')  # attn{1,2}.{q,k,v,o}, ffn.in/out, groups
    c.lora.base_dtype = 'bfloat16'  # the frozen base DiT (Wan ships bf16 weights)
    c.lora.dropout = 0.0  # only 0 is supported
    c.lora.base = ''  # the converted Wan folder whose DiT is adapted ('' = checkpoint)
    c.lora.base_sha256 = ''  # filled in by the run: hash of the base's transformer files

    t = c.train
    t.num_steps = 2000  # optimizer steps
    t.batch_size = 1  # global batch (clips)
    t.learning_rate = 1e-4  # peak LR of the adapters
    t.warmup_steps = 50  # linear warmup
    t.weight_decay = 0.0  # AdamW (no decay on adapters)
    t.ema_decay = 0.99  # EMA of the adapters (sampled by default)
    t.log_every = 10  # steps between logged scalars
    t.checkpoint_every = 250  # steps between checkpoints
    t.init_from = ''  # unused with LoRA (the base is lora.base)
    t.init_from_ema = True  # unused (a converted folder has one set of weights)
    t.eval_every = 0  # held-out evaluation (needs data.validation_fraction > 0)
    t.keep_checkpoints = 2  # newest checkpoints kept
    t.max_nonfinite = 20  # stop after this many non-finite steps in a row
    t.log_to = ('tensorboard',)  # tracking backends: tensorboard (workdir/tb), wandb
    t.eval_num_videos = 0  # no preview videos
    t.profile_steps = ()  # (first, last) 1-based steps traced into workdir/profile
    c.sample.fps = 16  # frames per second of written videos
    if size == 'tiny':  # tests/train/test_wan_lora.py: a tiny random Wan folder
        c.data.num_frames, c.data.height, c.data.width = 5, 32, 32
        c.lora.rank, c.lora.alpha, c.lora.base_dtype = 4, 4.0, 'float32'
        c.model.remat = 'none'  # a quicker compile
        t.num_steps, t.batch_size, t.warmup_steps = 4, 2, 0
        t.learning_rate, t.ema_decay, t.grad_clip = 3e-2, 0.0, 10.0
        t.log_every, t.checkpoint_every = 2, 2
        c.flow.text_dropout = 0.0
    return c


_SLICE_RECIPES = {  # arg -> (mesh.shape, train.batch_size, train.* memory options)
    't2v_14b,720p,v5p8': ((1, 1, 1, 4), 1, dict(mu_dtype='bfloat16', ema='off')),
    't2v_1.3b,720p,v5e8': ((1, 2, 1, 4), 2, {}),  # fits with the default state
}


def _slice_recipe(arg: str) -> mlc.ConfigDict:
    """A size trained on a named TPU slice with the cheapest train-state memory options that
    leave >= 10% of HBM free (per-chip figures by experiments/aot.py in docs/tpu_memory.md):
    parameters and optimizer state over every chip (fsdp x sequence), the clips' tokens over
    the sequence axis; for 14B on v5p-8 also AdamW's first moment in bf16 and no EMA (81.6 of
    95 GiB per chip); 1.3B on v5e-8 fits with the default state (11.3 of 14.9 GiB).

      python experiments/aot.py --config=configs/wan21.py:t2v_14b,720p,v5p8 --topology=v5p-8 \
          --task=train --num_frames=81 --height=720 --width=1280
    """
    if arg not in _SLICE_RECIPES:
        raise ValueError(
            f'configs/wan21.py: unknown arg {arg!r}; slice recipes: {sorted(_SLICE_RECIPES)}.'
        )
    mesh, batch, memory = _SLICE_RECIPES[arg]
    c = get_config(arg.rpartition(',')[0])
    c.mesh.shape = mesh
    c.mesh.rules = (('embed', ('fsdp', 'sequence')),)
    c.train.batch_size = batch
    c.train.update(memory)
    return c
