"""The shapes family: the demo model trained on synthetic captioned shapes videos (en + es).

Args (`--config=configs/shapes.py:ARG`):
  vae        the causal video VAE (4x time, 4x space, 8 latent channels).
  dit_base   stage 1 of the shipped demo model: byte text encoder + DiT in pixel space on 16-frame
             32x32 clips (plus 8-frame and 32x48 / 48x32 size buckets), trained with random frame
             masks so one model does t2v, i2v, extend, connect and loop.
  dit_stage2 stage 2: dit_base fine-tuned (train.init_from) on plain backgrounds, larger shapes
             and noise-shifted times (flow.shift = 5), with the pooled text feature in adaLN.
  dit        stage 3, the shipped model: dit_stage2's raw weights trained further, mostly on
             text-to-video at the 16x32x32 size, with a faster EMA.
  dit_latent the same on the VAE's latents of 17-frame clips (needs a VAE workdir; the shapes
             VAE did not reach usable quality within the CPU budget, see README).
  dit_pixel  a smaller pixel-space DiT, 8 frames at 16x16.
  tiny, tiny_vae   tiny and fast: what the tests train.

The shipped recipe (checkpoints/shapes):
  python experiments/train.py --config=configs/shapes.py:dit_base --workdir=workdirs/shapes_dit_base
  python experiments/train.py --config=configs/shapes.py:dit_stage2 --workdir=workdirs/shapes_dit_stage2
  python experiments/train.py --config=configs/shapes.py:dit --workdir=workdirs/shapes_dit
  python experiments/export.py --dit=workdirs/shapes_dit --dst=checkpoints/shapes
  python experiments/sample.py --checkpoint=checkpoints/shapes --prompt="a red circle moving to the left" --out=outputs/red.mp4
"""
import ml_collections as mlc

# Attribute combinations never generated for training; the judge evaluates on them.
HOLDOUT = (('red', 'triangle'), ('blue', 'square'), ('green', 'circle'))


def get_config(arg: str = 'dit') -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.seed = 0                      # every random draw folds from this
    c.objective = 'flow'            # train/objectives/<objective>.py
    c.autoencoder = 'none'          # 'none' (pixel space) or a VAE checkpoint directory
    c.latent_channels = 3           # channels the DiT sees (3 in pixel space, VAE z_dim otherwise)
    c.latent_mean = ()              # per-channel latent stats; filled from the data when empty
    c.latent_std = ()

    c.data = mlc.ConfigDict()
    c.data.name = 'shapes'          # 'shapes' (synthetic, built on demand) or 'folder' (videos)
    c.data.data_dir = 'data_cache'  # where tfds builds/reads array_record files
    c.data.folder = ''              # data.name='folder': directory of mp4/webm/gif files
    c.data.captions = ''            # its captions.jsonl / .csv (default: inside the folder)
    c.data.frame_stride = 1         # keep every n-th frame of folder videos
    c.data.validation_fraction = 0.0  # folder clips held out for evaluation
    c.data.num_train = 2048         # synthetic train clips
    c.data.num_validation = 64      # synthetic held-out clips
    c.data.num_frames = 8           # T of each clip (used when data.sizes is empty)
    c.data.height = 16              # H
    c.data.width = 16               # W
    c.data.sizes = ()               # ((T, H, W), ...) size buckets; overrides the three above
    c.data.size_weights = ()        # relative frequency of each size bucket (default uniform)
    c.data.holdout = HOLDOUT        # (color, shape) combinations held out of training
    c.data.spanish_prob = 0.5       # probability a caption is the Spanish one
    c.data.worker_count = 0         # grain worker processes (0: in the training process)
    c.data.max_objects = 2          # shapes per clip, 1..max_objects
    c.data.backgrounds = ('plain', 'horizontal_stripes', 'vertical_stripes', 'checker')  # kinds drawn
    c.data.size_scale = 1.0         # multiplies shape radii (1.0: 9-27% of the shorter side)

    c.text = mlc.ConfigDict()
    c.text.max_length = 128         # bytes (+ BOS); longer prompts are truncated with a warning
    c.text.dim = 128                # byte encoder width (= model.text_dim)
    c.text.depth = 2                # encoder layers
    c.text.num_heads = 4            # encoder heads
    c.text.mlp_ratio = 4            # FFN width / dim
    c.text.dtype = 'float32'        # compute dtype

    c.model = mlc.ConfigDict()
    c.model.patch_size = (2, 2, 2)  # (t, h, w) patch
    c.model.dim = 192               # width
    c.model.num_heads = 4           # heads (head dim = dim / heads, even)
    c.model.ffn_dim = 512           # MLP hidden width
    c.model.depth = 6               # blocks
    c.model.text_dim = 128          # = text.dim
    c.model.freq_dim = 256          # sinusoidal timestep features
    c.model.eps = 1e-6              # norm epsilon
    c.model.cross_attn_norm = True  # affine LayerNorm before cross-attention
    c.model.rope_theta = 10000.0    # RoPE base
    c.model.timestep_scale = 1000.0 # t in [0,1] -> model timesteps
    c.model.attention = 'auto'      # auto | xla | cudnn | chunked | splash
    c.model.attention_chunk = 512   # query/key chunk of the 'chunked' kernel
    c.model.context_parallel = 'none'  # none | ulysses | ring (over the 'sequence' mesh axis)
    c.model.dtype = 'float32'       # compute dtype (bfloat16 on accelerators)
    c.model.param_dtype = 'float32' # master weights
    c.model.scan_layers = True      # lax.scan over blocks (compile time flat in depth)
    c.model.remat = 'none'          # none | full | dots | dots_all
    c.model.pooled_text = False     # also feed the mean text feature to adaLN (not in Wan 2.1)

    c.flow = mlc.ConfigDict()
    c.flow.timestep_sampling = 'logit_normal'  # logit_normal | uniform
    c.flow.logit_mean = 0.0         # logit-normal location
    c.flow.logit_std = 1.0          # logit-normal scale
    c.flow.shift = 1.0              # training timestep shift
    c.flow.text_dropout = 0.1       # probability of the empty prompt (for CFG)
    c.flow.prediction = 'velocity'  # velocity | data (x0; for pixel space with large patches)

    c.conditioning = mlc.ConfigDict()
    c.conditioning.enabled = False  # frame-mask conditioning (i2v, extend, connect, loop)
    c.conditioning.probs = {        # training mode probabilities (normalised)
        't2v': 0.5, 'i2v': 0.2, 'extend': 0.1, 'extend_backward': 0.05, 'connect': 0.1,
        'loop': 0.05}

    c.train = mlc.ConfigDict()
    c.train.num_steps = 3000        # optimizer steps
    c.train.init_from = ''          # warm start: params (EMA) of another run's workdir / bundle
    c.train.init_from_ema = True    # warm start from its EMA params (False: its raw params)
    c.train.batch_size = 32         # global batch
    c.train.grad_accum_steps = 1    # micro-batches per step (batch_size divisible by it)
    c.train.learning_rate = 3e-4    # peak LR
    c.train.min_lr_ratio = 0.1      # final LR / peak
    c.train.warmup_steps = 200      # linear warmup
    c.train.weight_decay = 0.01     # AdamW
    c.train.b1 = 0.9                # AdamW
    c.train.b2 = 0.99               # AdamW
    c.train.grad_clip = 1.0         # global-norm clip
    c.train.ema_decay = 0.999       # EMA of params (sampled by default)
    c.train.log_every = 50          # steps between TensorBoard scalars
    c.train.checkpoint_every = 500  # steps between checkpoints
    c.train.eval_every = 500        # steps between held-out evaluations (0: never)
    c.train.keep_checkpoints = 2    # newest checkpoints kept
    c.train.max_nonfinite = 20      # stop after this many non-finite steps in a row
    c.train.log_example_ids = False # write workdir/example_ids.jsonl (step, ids, loss)
    # Fault-injection hooks for the reliability tests (leave at 0 in real runs):
    c.train.debug_sleep_per_step = 0.0  # seconds to sleep after each step
    c.train.debug_nan_from_step = 0     # feed NaN inputs from this 1-based step on
    c.train.debug_save_delay_s = 0.0    # stall each checkpoint commit

    c.mesh = mlc.ConfigDict()
    c.mesh.shape = (-1, 1, 1, 1)    # (data, fsdp, tensor, sequence); -1 = the remaining devices
    c.mesh.rules = ()               # ((logical, mesh axis), ...) overrides of parallel/mesh.py

    c.sample = mlc.ConfigDict()
    c.sample.num_frames = 8         # default clip length
    c.sample.height = 16            # default height
    c.sample.width = 16             # default width
    c.sample.steps = 25             # sampling steps
    c.sample.sampler = 'euler'      # euler | heun | unipc | dpmpp_2m
    c.sample.guidance_scale = 4.0   # classifier-free guidance
    c.sample.shift = 1.0            # sampling timestep shift
    c.sample.fps = 8                # frames per second of written videos
    c.sample.display_scale = 4      # written videos are upscaled (nearest) by this factor

    if arg in ('vae', 'tiny_vae'):
        _vae(c, tiny=arg == 'tiny_vae')
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
    elif arg == 'dit':
        _demo_dit(c)
    elif arg == 'dit_stage2':
        _demo_dit_stage2(c)
    elif arg == 'dit_base':
        _demo_dit_base(c)
    elif arg == 'dit_latent':
        _latent_dit(c)
    elif arg != 'dit_pixel':
        raise ValueError(f'configs/shapes.py: unknown arg {arg!r}; use vae, dit, dit_stage2, '
                         'dit_base, dit_latent, dit_pixel, tiny or tiny_vae.')
    return c


def _demo_dit(c: mlc.ConfigDict) -> None:
    """The shipped demo, stage 3: stage 2 ended with the prompt's colour still improving and its
    0.999 EMA behind the raw weights, so this stage starts from stage 2's raw weights, spends
    80% of its examples on text-to-video (stage 2: 50%) and 85% on the 16x32x32 size the demo
    samples (70%), and keeps a 0.995 EMA (a 200-step horizon).

    4,400 steps took 90 min on 2 CPU cores. Held-out combinations (evaluate.py --holdout_only
    --num_per_combo=2), EMA, en / es: colour 0.83 / 0.86, shape 0.50 / 0.43, motion 0.05 / 0.12,
    one object found 0.76 (stage 2: colour 0.79 / 0.62, shape 0.24 / 0.29, motion 0.10 / 0.07)."""
    _demo_dit_stage2(c)
    c.train.init_from = 'workdirs/shapes_dit_stage2'
    c.train.init_from_ema = False
    c.conditioning.probs.t2v = 2.0  # 2 / (2 + 0.5): the other modes keep their relative shares
    c.data.size_weights = (0.85, 0.05, 0.05, 0.05)
    c.train.ema_decay = 0.995
    c.train.num_steps = 4400
    c.train.learning_rate = 3e-4
    c.train.warmup_steps = 100


def _demo_dit_stage2(c: mlc.ConfigDict) -> None:
    """Stage 2 of the shipped demo: `dit_base` fine-tuned on plain backgrounds with 1.5x larger
    shapes, training and sampling times shifted towards noise (uniform times, shift 5). In pixel
    space a 16x32x32 clip holds so many values that the shape, its colour and its path stay
    visible in x_t up to t = 0.95 or so; only above that does the prompt help, and that is where
    the first sampling steps decide the layout. At shift 1 the logit-normal draws t > 0.95 for
    0.2% of examples: stage 1 learned to denoise but ignored the text (its x0 error at t = 1 was
    the same with the true, a shuffled or the empty prompt). The pooled text
    feature in adaLN gives every block the prompt directly, not only through cross-attention."""
    _demo_dit_base(c)
    c.train.init_from = 'workdirs/shapes_dit_base'
    c.model.pooled_text = True      # a direct global text signal (new, zero-initialised)
    c.data.backgrounds = ('plain',)
    c.data.size_scale = 1.5
    c.flow.timestep_sampling = 'uniform'
    c.flow.shift = 5.0              # 21% of training times above 0.95, 5% above 0.99
    c.sample.shift = 5.0
    c.train.num_steps = 3600
    c.train.learning_rate = 4e-4
    c.train.warmup_steps = 100


def _demo_dit_base(c: mlc.ConfigDict) -> None:
    """Stage 1 of the shipped demo: 16-frame 32x32 clips in pixel space, (2, 4, 4) patches -> 512
    tokens, with 8-frame and 32x48 / 48x32 size buckets and frame-mask conditioning."""
    c.data.num_train = 4096
    c.data.max_objects = 1          # one shape per clip (the judge's prompts)
    c.data.num_frames, c.data.height, c.data.width = 16, 32, 32
    c.data.sizes = ((16, 32, 32), (8, 32, 32), (16, 32, 48), (16, 48, 32))
    c.data.size_weights = (0.7, 0.1, 0.1, 0.1)
    c.conditioning.enabled = True
    c.model.patch_size = (2, 4, 4)
    c.model.dim, c.model.num_heads, c.model.ffn_dim, c.model.depth = 160, 4, 640, 5
    c.train.num_steps = 2400
    c.train.batch_size = 8
    c.train.learning_rate = 6e-4
    c.train.warmup_steps = 150
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.train.eval_every = 0
    c.sample.num_frames, c.sample.height, c.sample.width = 16, 32, 32


def _latent_dit(c: mlc.ConfigDict) -> None:
    """The demo DiT on VAE latents (17x32x32 clips -> 5x8x8x8 latents -> 80 tokens)."""
    _demo_dit_base(c)
    c.autoencoder = 'workdirs/shapes_vae'
    c.latent_channels = 8           # = vae.z_dim
    c.data.num_frames = 17          # 1 + 4k for the causal VAE
    c.data.sizes = ((17, 32, 32), (9, 32, 32), (17, 32, 48), (17, 48, 32))
    c.model.patch_size = (1, 2, 2)
    c.model.dim, c.model.ffn_dim, c.model.depth = 192, 768, 6
    c.train.num_steps, c.train.batch_size, c.train.learning_rate = 3000, 16, 5e-4
    c.sample.num_frames = 17


def _vae(c: mlc.ConfigDict, tiny: bool) -> None:
    """The causal video VAE of the shapes family: 4x time, 4x space."""
    c.objective = 'vae'
    for k in ('text', 'model', 'flow', 'sample', 'latent_mean', 'latent_std'):
        del c[k]
    c.data.spanish_prob = 0.0
    c.data.num_frames = 9           # 1 + 4k frames (causal, so it also codes 17-frame clips)
    c.data.height = c.data.width = 32
    c.vae = mlc.ConfigDict()
    c.vae.base_dim = 8              # channels of the first level
    c.vae.z_dim = 8                 # latent channels
    c.vae.dim_mult = (1, 2, 2)      # per level; 2 downsamplings -> 4x space
    c.vae.num_res_blocks = 1        # residual blocks per level
    c.vae.attn_scales = ()          # encoder attention scales
    c.vae.temperal_downsample = (True, True)  # both levels halve time -> 4x time
    c.vae.dropout = 0.0             # dropout in residual blocks
    c.vae.latents_mean = None       # per-channel latent mean (None: 0)
    c.vae.latents_std = None        # per-channel latent std (None: 1)
    c.vae.tile_sample_min_size = 64 # tiled encode/decode tile (pixels)
    c.vae.tile_sample_stride = 48   # tile stride (pixels)
    c.vae.kl_weight = 1e-6          # KL weight (per-element convention of objectives/vae.py)
    c.vae.sample_posterior = True   # decode a posterior sample in training
    c.vae.use_gan = False           # train a 3D patch discriminator in the model (hinge GAN)
    c.vae.disc_weight = 0.1         # generator adversarial-loss weight (use_gan)
    c.vae.disc_start = 0            # must be 0 with use_gan (the loop has no step for loss_fn)
    c.vae.disc_dim = 32             # discriminator width
    c.vae.disc_layers = 2           # discriminator strided layers
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
