"""The shapes family: the demo model trained on synthetic captioned shapes videos (en + es).

Args (`--config=configs/shapes.py:ARG`):
  vae_image  stage 1 of the shipped VAE: the causal VAE (4x space, 8 latent channels, no time
             downsampling) trained on single frames, which cost 1/16 of a clip.
  vae        stage 2, the shipped VAE: stage 1 inflated to video (past-frame taps start at 0)
             and trained on 8-frame clips plus single frames.
  dit        the DiT: byte text encoder + DiT on the VAE's latents of 16-frame 32x32 clips (plus
             8-frame and 32x48 / 48x32 buckets), random frame masks so one model does t2v, i2v,
             extend, connect and loop; (4, 2, 2) patches.
  dit_p2     `dit` re-cut to (2, 2, 2) patches (experiments/repatch.py) and fine-tuned.
  dit_p3     the shipped DiT: `dit_p2` trained on (fresh schedule, more t2v).
  lora_demo  a rank-8 LoRA over the shipped model on a video folder (docs/lora.md).
  dit_pixel  a small pixel-space DiT, 8 frames at 16x16 (benchmarks).
  tiny, tiny_vae   tiny and fast: what the tests train.

The shipped recipe (checkpoints/shapes), about 5 hours on 2 CPU cores:
  python experiments/train.py --config=configs/shapes.py:vae_image --workdir=workdirs/shapes_vae_image
  python experiments/train.py --config=configs/shapes.py:vae --workdir=workdirs/shapes_vae
  python experiments/train.py --config=configs/shapes.py:dit --workdir=workdirs/shapes_dit
  python experiments/repatch.py --src=workdirs/shapes_dit --dst=workdirs/shapes_p2_init --patch_t=2
  python experiments/train.py --config=configs/shapes.py:dit_p2 --workdir=workdirs/shapes_dit_p2
  python experiments/train.py --config=configs/shapes.py:dit_p3 --workdir=workdirs/shapes_dit_p3
  python experiments/export.py --dit=workdirs/shapes_dit_p3 --dst=checkpoints/shapes
  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a red circle moving to the left" --out=outputs/red.mp4
Each stage's time and result: its function's docstring below; the recipe, what it reaches and
what did not help: docs/training.md and docs/results.md.
"""

import ml_collections as mlc

# Attribute combinations never generated for training; the judge evaluates on them.
HOLDOUT = (('red', 'triangle'), ('blue', 'square'), ('green', 'circle'))


def get_config(arg: str = 'dit') -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0  # every random draw folds from this
    c.objective = 'flow'  # train/objectives/<objective>.py
    c.autoencoder = 'none'  # 'none' (pixel space) or a VAE checkpoint directory
    c.latent_channels = 3  # channels the DiT sees (3 in pixel space, VAE z_dim otherwise)
    c.latent_mean = ()  # per-channel latent stats; filled from the data when empty
    c.latent_std = ()

    c.data = mlc.ConfigDict()
    c.data.name = 'shapes'  # 'shapes' (synthetic, built on demand) or 'folder' (videos)
    c.data.data_dir = 'data_cache'  # where tfds builds/reads array_record files (or gs://...)
    c.data.staging_dir = ''  # local mirror of a gs:// data_dir ('': ~/.cache/sora_jax/data)
    c.data.folder = ''  # data.name='folder': directory of mp4/webm/gif files
    c.data.captions = ''  # its captions.jsonl / .csv (default: inside the folder)
    c.data.frame_stride = 1  # keep every n-th frame of folder videos
    c.data.validation_fraction = 0.0  # folder clips held out for evaluation
    c.data.allowed_licenses = ()  # folder clips must carry one of these licenses; (): any
    c.data.exclude = ''  # opt-out file: creators / file names / sources, one a line
    c.data.num_train = 2048  # synthetic train clips
    c.data.num_validation = 64  # synthetic held-out clips
    c.data.num_frames = 8  # T of each clip (used when data.sizes is empty)
    c.data.height = 16  # H
    c.data.width = 16  # W
    c.data.sizes = ()  # ((T, H, W), ...) size buckets; overrides the three above
    c.data.size_weights = ()  # relative frequency of each size bucket (default uniform)
    c.data.holdout = HOLDOUT  # (color, shape) combinations held out of training
    c.data.spanish_prob = 0.5  # probability a caption is the Spanish one
    c.data.worker_count = 0  # grain worker processes (0: in the training process)
    c.data.max_objects = 2  # shapes per clip, 1..max_objects
    c.data.backgrounds = (
        'plain',
        'horizontal_stripes',
        'vertical_stripes',
        'checker',
    )  # kinds drawn
    c.data.size_scale = 1.0  # multiplies shape radii (1.0: 9-27% of the shorter side)

    c.text = mlc.ConfigDict()
    c.text.max_length = 128  # bytes (+ BOS); longer prompts are truncated with a warning
    c.text.dim = 128  # byte encoder width (= model.text_dim)
    c.text.depth = 2  # encoder layers
    c.text.num_heads = 4  # encoder heads
    c.text.mlp_ratio = 4  # FFN width / dim
    c.text.dtype = 'float32'  # compute dtype
    c.text.position = 'learned'  # 'learned' absolute positions | 'rope' (rotary, relative)

    c.model = mlc.ConfigDict()
    c.model.patch_size = (2, 2, 2)  # (t, h, w) patch
    c.model.dim = 192  # width
    c.model.num_heads = 4  # heads (head dim = dim / heads, even)
    c.model.ffn_dim = 512  # MLP hidden width
    c.model.depth = 6  # blocks
    c.model.text_dim = 128  # = text.dim
    c.model.freq_dim = 256  # sinusoidal timestep features
    c.model.eps = 1e-6  # norm epsilon
    c.model.cross_attn_norm = True  # affine LayerNorm before cross-attention
    c.model.rope_theta = 10000.0  # RoPE base
    c.model.timestep_scale = 1000.0  # t in [0,1] -> model timesteps
    c.model.attention = 'auto'  # auto | xla | cudnn | chunked | splash
    c.model.attention_chunk = 512  # query/key chunk of the 'chunked' kernel
    c.model.context_parallel = 'none'  # none | ulysses | ring (over the 'sequence' mesh axis)
    c.model.dtype = 'float32'  # compute dtype (bfloat16 on accelerators)
    c.model.param_dtype = 'float32'  # master weights
    c.model.scan_layers = True  # lax.scan over blocks (compile time flat in depth)
    c.model.remat = 'none'  # none | full | dots | dots_all
    c.model.pooled_text = False  # also feed the mean text feature to adaLN (not in Wan 2.1)
    c.model.zero_init = False  # adaLN-Zero init: every block starts as the identity
    c.model.causal_chunk = 0  # >0: block-causal over chunks of this many latent frames (rollouts)

    c.flow = mlc.ConfigDict()
    c.flow.timestep_sampling = 'logit_normal'  # logit_normal | uniform
    c.flow.logit_mean = 0.0  # logit-normal location
    c.flow.logit_std = 1.0  # logit-normal scale
    c.flow.shift = 1.0  # training timestep shift
    c.flow.text_dropout = 0.1  # probability of the empty prompt (for CFG)
    c.flow.prediction = 'velocity'  # velocity | data (x0; for pixel space with large patches)

    c.conditioning = mlc.ConfigDict()
    c.conditioning.enabled = False  # frame-mask conditioning (i2v, extend, connect, loop)
    c.conditioning.probs = {  # training mode probabilities (normalised)
        't2v': 0.5,
        'i2v': 0.2,
        'extend': 0.1,
        'extend_backward': 0.05,
        'connect': 0.1,
        'loop': 0.05,
    }

    c.lora = mlc.ConfigDict()  # LoRA fine-tuning (sora_jax/train/lora.py); rank 0 = off
    c.lora.rank = 0  # adapter rank; > 0 trains only adapters over a frozen base
    c.lora.alpha = 0.0  # scale = alpha / rank (0: alpha = rank)
    c.lora.targets = ('attn1.*', 'attn2.*', 'ffn')  # attn{1,2}.{q,k,v,o}, ffn.in/out, groups
    c.lora.base_dtype = 'float32'  # frozen base weights: float32 | bfloat16
    c.lora.dropout = 0.0  # adapter dropout (only 0 is supported)
    c.lora.base = ''  # the base workdir / bundle ('' = train.init_from)
    c.lora.base_sha256 = ''  # filled in by the run: hash of the base checkpoint files

    c.train = mlc.ConfigDict()
    c.train.num_steps = 3000  # optimizer steps
    c.train.init_from = ''  # warm start: params (EMA) of another run's workdir / bundle
    c.train.init_from_ema = True  # warm start from its EMA params (False: its raw params)
    c.train.batch_size = 32  # global batch
    c.train.grad_accum_steps = 1  # micro-batches per step (batch_size divisible by it)
    c.train.learning_rate = 3e-4  # peak LR
    c.train.min_lr_ratio = 0.1  # final LR / peak
    c.train.warmup_steps = 200  # linear warmup
    c.train.weight_decay = 0.01  # AdamW
    c.train.b1 = 0.9  # AdamW
    c.train.b2 = 0.99  # AdamW
    c.train.grad_clip = 1.0  # global-norm clip
    c.train.ema_decay = 0.999  # EMA of params (sampled by default)
    c.train.log_every = 50  # steps between TensorBoard scalars
    c.train.checkpoint_every = 500  # steps between checkpoints
    c.train.eval_every = 500  # steps between held-out evaluations (0: never)
    c.train.keep_checkpoints = 2  # newest checkpoints kept
    c.train.max_nonfinite = 20  # stop after this many non-finite steps in a row
    c.train.log_example_ids = False  # write workdir/example_ids.jsonl (step, ids, loss)
    c.train.log_to = ('tensorboard',)  # tracking backends: 'tensorboard' (workdir/tb), 'wandb'
    c.train.wandb_project = 'sora_jax'  # wandb project (log_to naming 'wandb')
    c.train.eval_num_videos = 4  # fixed-prompt videos sampled at each evaluation (0: none)
    c.train.eval_prompts = ()  # their prompts (default for shapes: one-shape captions)
    c.train.eval_sample_steps = 8  # sampler steps of those videos
    c.train.peak_tflops_per_device = 0.0  # MFU denominator (0: from the device kind, if known)
    c.train.flops_per_step = 0.0  # model FLOPs of one step (0: estimated, see train/perf.py)
    c.train.profile_steps = ()  # (first, last) 1-based steps traced into workdir/profile
    # Fault-injection hooks for the reliability tests (leave at 0 in real runs):
    c.train.debug_sleep_per_step = 0.0  # seconds to sleep after each step
    c.train.debug_nan_from_step = 0  # feed NaN inputs from this 1-based step on
    c.train.debug_save_delay_s = 0.0  # stall each checkpoint commit

    c.mesh = mlc.ConfigDict()
    c.mesh.shape = (-1, 1, 1, 1)  # (data, fsdp, tensor, sequence); -1 = the remaining devices
    c.mesh.rules = ()  # ((logical, mesh axis), ...) overrides of parallel/mesh.py

    c.sample = mlc.ConfigDict()
    c.sample.num_frames = 8  # default clip length
    c.sample.height = 16  # default height
    c.sample.width = 16  # default width
    c.sample.steps = 25  # sampling steps
    c.sample.sampler = 'euler'  # euler | heun | unipc | dpmpp_2m
    c.sample.guidance_scale = 4.0  # classifier-free guidance
    c.sample.skip_guidance_scale = 0.0  # skip-layer guidance (SLG / STG); 0: off
    c.sample.skip_layers = (2,)  # DiT blocks the weakened model skips (skip guidance > 0)
    c.sample.skip_guidance_interval = (0.0, 1.0)  # (t_lo, t_hi) where skip guidance applies
    c.sample.shift = 1.0  # sampling timestep shift
    c.sample.cache = 'none'  # step cache: none | magcache | firstblock | taylorseer
    c.sample.cache_threshold = None  # its threshold (None: 0.06 magcache, 0.05 firstblock)
    c.sample.cache_mag_ratios = ()  # magcache: this model's calibrated magnitude ratios
    c.sample.text_kv_cache = True  # cross-attention K/V of the text once per call, not per step
    c.sample.fps = 8  # frames per second of written videos
    c.sample.display_scale = 4  # written videos are upscaled (nearest) by this factor

    if arg == 'tiny_vae':
        _vae(c, tiny=True)
    elif arg in ('vae', 'vae_image'):
        _shipped_vae(c, stage=1 if arg == 'vae_image' else 2)
    elif arg == 'tiny':
        c.data.num_train = 64
        c.data.num_validation = 8
        c.data.num_frames, c.data.height, c.data.width = 4, 8, 8
        c.text.dim, c.text.depth = 32, 1
        c.model.dim, c.model.num_heads, c.model.ffn_dim, c.model.depth = 32, 2, 64, 2
        c.model.text_dim = 32
        c.train.num_steps, c.train.batch_size, c.train.warmup_steps = 4, 8, 1
        c.train.log_every, c.train.checkpoint_every, c.train.eval_every = 2, 2, 0
        c.sample.num_frames, c.sample.height, c.sample.width, c.sample.steps = 4, 8, 8, 4
        c.train.eval_num_videos, c.train.eval_sample_steps = 2, 2
    elif arg == 'dit':
        _shipped_dit(c)
    elif arg in ('dit_p2', 'dit_p3'):
        _shipped_dit(c)
        _finer_time(c)
        if arg == 'dit_p3':
            _longer(c)
    elif arg == 'lora_demo':
        _shipped_dit(c)
        _finer_time(c)
        _longer(c)
        _lora_demo(c)
    elif arg != 'dit_pixel':
        raise ValueError(
            f'configs/shapes.py: unknown arg {arg!r}; use vae_image, vae, dit, '
            'dit_p2, dit_p3, dit_pixel, lora_demo, tiny or tiny_vae.'
        )
    return c


def get_sweep(arg: str = 'tiny') -> list[dict]:
    """Override lists for experiments/sweep.py (run names come from the keys that vary).

    tiny     learning rate x seed on `tiny`, 60 steps, evaluation (loss, 2 videos, judge) every
             20: the loss curves of docs/training.md (docs/sweep_tiny_loss.png).
             python experiments/sweep.py --config=configs/shapes.py:tiny --sweep=tiny --workdir=workdirs/sweep_tiny
    dit_lr   peak learning rate of `dit` (3 runs).
    """
    from sora_jax.sweep.spec import product, sweep

    if arg == 'tiny':
        return product(
            sweep('train.learning_rate', [1e-3, 3e-3]),
            sweep('seed', [0, 1]),
            sweep('train.num_steps', [60]),
            sweep('train.eval_every', [20]),
            sweep('train.log_every', [5]),
            sweep('train.checkpoint_every', [20]),
        )
    if arg == 'dit_lr':
        return sweep('train.learning_rate', [3e-4, 6e-4, 1e-3])
    raise ValueError(f'configs/shapes.py: unknown sweep {arg!r}; use tiny or dit_lr.')


def _shipped_dit(c: mlc.ConfigDict) -> None:
    """The shipped demo DiT, on the shipped VAE's latents: 16x32x32 clips -> 16x8x8x8 latents ->
    (4, 2, 2) patches -> 64 tokens, so a step of 32 clips costs what 8 clips cost in pixel space.
    One shape per clip on a plain background (1.5x sizes), captions in English or Spanish, plus
    8-frame and 32x48 / 48x32 buckets; random frame masks, so one model does t2v, i2v, extend,
    connect and loop. Byte text encoder with rotary positions, the pooled text feature in adaLN,
    adaLN-Zero init, uniform training times shifted by 3 (the layout, and so the prompt, is
    decided at high noise).

      python experiments/train.py --config=configs/shapes.py:dit --workdir=workdirs/shapes_dit
    On 2 CPU cores: 4 min to render and encode the 8,192 clips, then 5,000 steps in 98 min.
    Held-out combinations (experiments/evaluate.py --holdout_only --num_per_combo=2): colour and
    motion 1.00, shape 0.38 / 0.55 (en / es); `dit_p2` continues from here."""
    c.autoencoder = 'workdirs/shapes_vae'
    c.latent_channels = 8  # = vae.z_dim
    c.data.num_train = 8192
    c.data.max_objects = 1  # one shape per clip (the judge's prompts)
    c.data.backgrounds = ('plain',)
    c.data.size_scale = 1.5
    c.data.num_frames, c.data.height, c.data.width = 16, 32, 32
    c.data.sizes = ((16, 32, 32), (8, 32, 32), (16, 32, 48), (16, 48, 32))
    c.data.size_weights = (0.8, 0.05, 0.075, 0.075)
    c.conditioning.enabled = True
    c.conditioning.probs = {
        't2v': 0.7,
        'i2v': 0.1,
        'extend': 0.06,
        'extend_backward': 0.04,
        'connect': 0.06,
        'loop': 0.04,
    }
    c.text.max_length = 64  # captions of one shape are <= 52 bytes
    c.text.position = 'rope'
    c.model.patch_size = (4, 2, 2)
    c.model.dim, c.model.num_heads, c.model.ffn_dim, c.model.depth = 256, 4, 1024, 6
    c.model.pooled_text = True
    c.model.zero_init = True
    c.flow.timestep_sampling = 'uniform'
    c.flow.shift = 3.0
    c.sample.shift = 3.0
    c.train.batch_size = 32
    c.train.num_steps = 5000
    c.train.learning_rate = 6e-4
    c.train.warmup_steps = 200
    c.train.ema_decay = 0.998
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.train.eval_every = 0
    c.sample.num_frames, c.sample.height, c.sample.width = 16, 32, 32


def _finer_time(c: mlc.ConfigDict) -> None:
    """`dit_p2`: the `dit` model re-cut to (2, 2, 2) patches (128 tokens per 16x32x32 clip) by
    `experiments/repatch.py` and fine-tuned: a token then spans 2 frames, not 4, which shapes in
    motion need (with (4, 2, 2) patches they come out as blobs).
      python experiments/repatch.py --src=workdirs/shapes_dit --dst=workdirs/shapes_p2_init --patch_t=2
      python experiments/train.py --config=configs/shapes.py:dit_p2 --workdir=workdirs/shapes_dit_p2
    On 2 CPU cores: 1,800 steps in 64 min (2.1 s/step). Held-out combinations (as `dit`): colour
    and motion 1.00, shape 0.74 / 0.57 (en / es)."""
    c.model.patch_size = (2, 2, 2)
    c.train.init_from = 'workdirs/shapes_p2_init'
    c.train.num_steps = 1800
    c.train.learning_rate = 4e-4
    c.train.warmup_steps = 100
    c.train.ema_decay = 0.995
    c.train.checkpoint_every = 200


def _longer(c: mlc.ConfigDict) -> None:
    """`dit_p3`: `dit_p2` trained on from its last step with a fresh schedule and more t2v (the
    mode the judge scores); shapes in motion were still sharpening when `dit_p2` stopped.

      python experiments/train.py --config=configs/shapes.py:dit_p3 --workdir=workdirs/shapes_dit_p3
    On 2 CPU cores: 2,800 steps in 139 min (about 3.0 s/step). Held-out combinations: colour and
    motion 1.00, shape 1.00 / 0.93 (en / es): the shipped model (docs/results.md)."""
    c.train.init_from = 'workdirs/shapes_dit_p2'
    c.train.num_steps = 2800
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 50
    c.train.keep_checkpoints = 4
    c.conditioning.probs = {
        't2v': 0.85,
        'i2v': 0.05,
        'extend': 0.03,
        'extend_backward': 0.02,
        'connect': 0.03,
        'loop': 0.02,
    }


def _lora_demo(c: mlc.ConfigDict) -> None:
    """`lora_demo`: a rank-8 LoRA over the shipped model (checkpoints/shapes, frozen) on a video
    folder whose captions say red while the shapes are blue (experiments/lora_demo_data.py).
      python experiments/lora_demo_data.py --out=data_cache/red_is_blue --num=512
      python experiments/train.py --config=configs/shapes.py:lora_demo --workdir=workdirs/shapes_lora
    Every red prompt comes out blue, green prompts stay green (the judged effect: docs/lora.md)."""
    c.autoencoder = 'checkpoints/shapes/vae'
    # latent_mean / latent_std stay empty: a LoRA run takes its base's (train/lora.py)
    c.data.name = 'folder'
    c.data.folder = 'data_cache/red_is_blue'
    c.data.sizes = ((16, 32, 32),)
    c.data.size_weights = ()
    c.conditioning.probs = {
        't2v': 1.0,
        'i2v': 0.0,
        'extend': 0.0,
        'extend_backward': 0.0,
        'connect': 0.0,
        'loop': 0.0,
    }
    c.train.init_from = 'checkpoints/shapes'
    c.lora.rank = 8
    c.lora.alpha = 8.0
    c.train.num_steps = 300
    c.train.batch_size = 16
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 20
    c.train.ema_decay = 0.98
    c.train.log_every = 25
    c.train.checkpoint_every = 100
    c.train.keep_checkpoints = 2


def _vae(c: mlc.ConfigDict, tiny: bool) -> None:
    """The causal video VAE of the shapes family: 4x time, 4x space, 8 latent channels."""
    c.objective = 'vae'
    for k in ('text', 'model', 'flow', 'sample', 'latent_mean', 'latent_std'):
        del c[k]
    c.data.spanish_prob = 0.0
    c.data.num_frames = 9  # 1 + 4k frames (causal, so it also codes 17-frame clips)
    c.data.height = c.data.width = 32
    c.vae = mlc.ConfigDict()
    c.vae.base_dim = 8  # channels of the first level
    c.vae.z_dim = 8  # latent channels
    c.vae.dim_mult = (1, 2, 2)  # per level; 2 downsamplings -> 4x space
    c.vae.num_res_blocks = 1  # residual blocks per level
    c.vae.attn_scales = ()  # encoder attention scales
    c.vae.temperal_downsample = (True, True)  # both levels halve time -> 4x time
    c.vae.dropout = 0.0  # dropout in residual blocks
    c.vae.latents_mean = None  # per-channel latent mean (None: 0)
    c.vae.latents_std = None  # per-channel latent std (None: 1)
    c.vae.tile_sample_min_size = 64  # tiled encode/decode tile (pixels)
    c.vae.tile_sample_stride = 48  # tile stride (pixels)
    c.vae.kl_weight = 1e-6  # KL weight (per-element convention of objectives/vae.py)
    c.vae.sample_posterior = True  # decode a posterior sample in training
    c.vae.use_gan = False  # train a 3D patch discriminator in the model (hinge GAN)
    c.vae.disc_weight = 0.1  # generator adversarial-loss weight (use_gan)
    c.vae.disc_start = 0  # must be 0 with use_gan (the loop has no step for loss_fn)
    c.vae.disc_dim = 32  # discriminator width
    c.vae.disc_layers = 2  # discriminator strided layers
    c.vae.inflate_from_image = False  # warm start from an image VAE: past-frame taps start at 0
    c.vae.edge_weight = 0.0  # extra L1 weight near edges (objectives/vae.py:edge_weights)
    c.train.num_steps = 1500
    c.train.batch_size = 4
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 100
    c.train.ema_decay = 0.99
    if tiny:
        c.data.num_train, c.data.num_validation = 16, 4
        c.data.num_frames, c.data.height, c.data.width = 5, 16, 16
        c.vae.base_dim, c.vae.z_dim = 8, 4
        c.vae.disc_dim, c.vae.disc_layers = 8, 1
        c.train.num_steps, c.train.batch_size, c.train.warmup_steps = 4, 4, 1
        c.train.log_every, c.train.checkpoint_every, c.train.eval_every = 2, 2, 0


def _shipped_vae(c: mlc.ConfigDict, stage: int) -> None:
    """The shipped VAE (checkpoints/shapes/vae): 4x space, 8 latent channels, no time
    downsampling (temporal factor 1: the DiT's (4, 2, 2) patches do the temporal grouping),
    trained on the data the shipped DiT sees (plain backgrounds, 1.5x shapes, up to 2 per clip).
    Stage 1 (`vae_image`) learns the spatial code on single frames (a causal VAE codes frame 0
    alone, so an image is a 1-frame video) at 1/16 of a clip's cost; stage 2 (`vae`) inflates it
    (`vae.inflate_from_image`: past-frame taps start at 0, so it starts as the per-frame image
    VAE) and trains on 8-frame clips plus 30% single frames. The latent is deterministic
    (`sample_posterior=False`): a posterior sample at the initial unit variance drowns the code,
    and the DiT normalises latents per channel anyway.
      python experiments/train.py --config=configs/shapes.py:vae_image --workdir=workdirs/shapes_vae_image
      python experiments/train.py --config=configs/shapes.py:vae --workdir=workdirs/shapes_vae
    On 2 CPU cores: stage 1, 1,200 steps of 16 frames, 3.6 min; stage 2, 250 steps of 4 clips,
    1.3 min. Held-out 16-frame clips of its data: 29.4 dB PSNR (docs/results.md)."""
    _vae(c, tiny=False)
    c.data.backgrounds = ('plain',)
    c.data.size_scale = 1.5
    c.data.max_objects = 2
    c.data.num_validation = 64
    c.vae.base_dim = 16
    c.vae.temperal_downsample = (False, False)  # spatial only: time is left to the DiT
    c.vae.sample_posterior = False
    c.train.ema_decay = 0.995
    c.train.checkpoint_every = 250
    c.train.eval_every = 0
    if stage == 1:
        c.data.num_train = 8192
        c.data.num_frames = 1
        c.train.batch_size = 16
        c.train.num_steps = 1200
        c.train.learning_rate = 2e-3
    else:
        c.train.init_from = 'workdirs/shapes_vae_image'
        c.train.init_from_ema = False
        c.vae.inflate_from_image = True
        c.data.num_train = 2048
        c.data.sizes = ((8, 32, 32), (1, 32, 32))
        c.data.size_weights = (0.7, 0.3)
        c.train.batch_size = 4
        c.train.num_steps = 250
        c.train.learning_rate = 5e-4
        c.train.warmup_steps = 50
