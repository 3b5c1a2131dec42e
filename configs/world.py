"""The world family: a video VAE that compresses time and space, and a DiT on its latents, trained
on the physics world (sora_jax/data/world.py: one or two objects moving, bouncing, falling or
resting, an occluder, 33 frames of 64x64; docs/world.md).

Args (`--config=configs/world.py:ARG`):
  vae_image  stage 1: the causal VAE (4x space, 8 latent channels) on single frames of the world
             (a causal VAE codes frame 0 alone: an image is a 1-frame video, 1/33 of a clip),
             warm-started from the shipped shapes VAE (checkpoints/shapes/vae: the same levels,
             spatial only; the time convolutions it lacks start from their initialisation).
  vae        stage 2: stage 1 inflated to video (past-frame taps start at 0) with 4x time: clips
             of 9 frames plus 25% single frames.
  vae_long   stage 2b: stage 2 on 33-frame clips too: trained on 9 frames only, the VAE codes
             those at 31.5 dB but drifts past them (frames 10-33 fall to 16-26 dB).
  vae_edges  stage 2c: stage 2b trained on with an edge-weighted L1 (vae.edge_weight): at
             29 dB stage 2b rounds squares into circles and turns red orange, errors in the
             few % of pixels that plain L1 barely sees.
  dit        stage 3: byte text encoder + DiT on the stage-2 VAE's latents of 33-frame clips:
             [9, 16, 16, 8] latents, (1, 4, 4) patches -> 144 tokens.
  dit_long   stage 4: `dit` trained on from its last step (fresh schedule, lower peak).
  dit_causal stage 5 (long videos, docs/long_video.md): `dit_long` fine-tuned block-causal
             (model.causal_chunk = 3 latent frames) with diffusion forcing, for chunked rollouts.
  tiny_vae, tiny, tiny_causal   tiny and fast: what tests/train/test_world_train.py trains.

Why 4x time and 4x space: a 33x64x64 clip becomes 9x16x16 latents (x8 channels, 22x fewer
numbers than pixels) and, in (1, 4, 4) patches, 144 tokens: attention over 144 tokens costs
about what the shapes DiT pays for 64-128, so a DiT step of 32 clips fits a CPU budget. Wan 2.1's
8x space (16 channels, (1, 2, 2) patches: the same 144 tokens) was tried first and failed here:
after 1,537 steps of stage 1 its frames came back as grey blobs on a flat background (16
held-out frames: objects off by 70 of 255 per channel, 22 dB), where the shipped 4x shapes VAE,
never trained on this world, already gives 29.8 dB and objects within 9 of 255 (docs/world.md).
The objects are 9-13 px across: 8x leaves them 1-2 latent pixels, too few for a network this
narrow to learn in a CPU budget; 4x leaves them 2-3. 2x time would double the tokens (288).
4x time is the risky factor, so the spatial code comes first (stage 1, frames), time is added
by inflation (stage 2), and stage 2 gets the larger share of the VAE's time.

The planned recipe on 2 CPU cores (about 8 hours in four stages; each stage checkpoints every
250 steps and resumes exactly when its command is run again):
  python experiments/train.py --config=configs/world.py:vae_image --workdir=workdirs/world_vae_image
  python experiments/train.py --config=configs/world.py:vae --workdir=workdirs/world_vae
  python experiments/train.py --config=configs/world.py:vae_long --workdir=workdirs/world_vae_long
  python experiments/train.py --config=configs/world.py:vae_edges --workdir=workdirs/world_vae_edges
  python experiments/export.py --vae=workdirs/world_vae_edges --dst=checkpoints/world_vae
  python experiments/train.py --config=configs/world.py:dit --workdir=workdirs/world_dit
  python experiments/train.py --config=configs/world.py:dit_long --workdir=workdirs/world_dit_long
  python experiments/train.py --config=configs/world.py:dit_causal --workdir=workdirs/world_dit_causal
  python experiments/export.py --dit=workdirs/world_dit_long --dst=checkpoints/world
Budgets per stage (from step costs measured with a few steps, docs/world.md): in each stage
function's docstring below; about 7 h in all. Not trained yet: the results go to
docs/world.md when they exist.
"""

import os

import ml_collections as mlc

from sora_jax import config_files

# The shared base (data / text / model / flow / train / mesh / sample sections): configs/shapes.py
# by path, as --config=configs/world.py loads us.
shapes = config_files.load_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'shapes.py')
)

# Eval prompts for the fixed-prompt previews: one and two objects, en and es.
EVAL_PROMPTS = (
    'a red circle bouncing and a blue square falling',
    'un círculo rojo rebotando y un cuadrado azul cayendo',
    'a green triangle moving to the right, behind a grey vertical bar',
    'a yellow square falling',
)


def get_config(arg: str = 'dit') -> mlc.ConfigDict:
    if arg in ('vae_image', 'vae', 'vae_long', 'vae_edges', 'tiny_vae'):
        c = shapes.get_config('tiny_vae')
        _world_data(c)
        _vae(c, arg)
    elif arg in ('dit', 'dit_long', 'dit_causal', 'tiny', 'tiny_causal'):
        c = shapes.get_config('dit_pixel')  # the unmodified base of the shapes family
        _world_data(c)
        _dit(c, arg)
    else:
        raise ValueError(
            f'configs/world.py: unknown arg {arg!r}; use vae_image, vae, vae_long, vae_edges, dit, dit_long, '
            'dit_causal, tiny, tiny_causal or tiny_vae.'
        )
    return c


def _world_data(c: mlc.ConfigDict) -> None:
    d = c.data
    for key in ('holdout', 'max_objects', 'backgrounds', 'size_scale'):  # shapes-only knobs
        del d[key]
    d.name = 'world'  # sora_jax/data/builders/world.py
    d.num_frames, d.height, d.width = 33, 64, 64  # T, H, W (used when data.sizes is empty)
    d.sizes = ((33, 64, 64),)  # (T, H, W) buckets, cut from 33-frame scenes
    d.size_weights = ()  # relative frequency of each bucket
    d.num_objects = (1, 2)  # object counts drawn from
    d.occluder_prob = 0.4  # chance of a grey bar the objects pass behind
    d.split_seed = 0  # world.holdout_split(split_seed): held-out pairs and combinations
    d.num_train = 8192  # train clips
    d.num_validation = 64  # validation clips (training distribution, another stream)


def _vae(c: mlc.ConfigDict, arg: str) -> None:
    """The world VAE: 4x time (both downsamplings halve time), 4x space, 8 channels: the
    shipped shapes VAE's levels (base_dim 16, dim_mult (1, 2, 2)) with time downsampling.

    Budgets (wall time on this machine while other jobs ran; the stage log in docs/world.md
    holds what each stage took): vae_image 800 steps of 16 single frames, warm-started from the
    shipped shapes VAE, about 30 min plus 2 min to render the 8,192 scenes; vae 2,000 steps of
    4 clips of 9 frames, about 2 h."""
    v = c.vae
    v.base_dim = 16  # channels of the first level
    v.z_dim = 8  # latent channels
    v.dim_mult = (1, 2, 2)  # per level; 2 downsamplings -> 4x space
    v.temperal_downsample = (True, True)  # both halve time -> 4x
    v.num_res_blocks = 1
    v.sample_posterior = False  # deterministic latent (see configs/shapes.py:_shipped_vae)
    c.train.ema_decay = 0.995
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 2
    c.train.eval_every = 0
    c.data.num_validation = 32
    if arg == 'vae_image':
        c.train.init_from = 'checkpoints/shapes/vae'  # its EMA weights; time convs start fresh
        c.data.sizes = ((1, 64, 64),)
        c.data.num_train = 8192
        c.train.batch_size = 16
        c.train.num_steps = 800
        c.train.learning_rate = 1e-3
        c.train.warmup_steps = 50
    elif arg == 'vae':
        c.train.init_from = 'workdirs/world_vae_image'
        c.train.init_from_ema = False
        v.inflate_from_image = True
        c.data.sizes = ((9, 64, 64), (1, 64, 64))
        c.data.size_weights = (0.75, 0.25)
        c.data.num_train = 4096
        c.train.batch_size = 4
        c.train.num_steps = 2000
        c.train.learning_rate = 5e-4
        c.train.warmup_steps = 100
    elif arg == 'vae_long':  # stage 2 codes 9 frames well, 33 not: after 9 it drifts
        c.train.init_from = 'workdirs/world_vae'
        c.train.init_from_ema = False
        c.data.sizes = ((33, 64, 64), (9, 64, 64))
        c.data.size_weights = (0.5, 0.5)
        c.data.num_train = 2048
        c.train.batch_size = 2
        c.train.num_steps = 600
        c.train.learning_rate = 2e-4
        c.train.warmup_steps = 50
    elif arg == 'vae_edges':  # stage 2b's shapes and colours: weight the pixels near edges
        c.train.init_from = 'workdirs/world_vae_long'
        c.train.init_from_ema = False
        v.edge_weight = 4.0  # near an object up to 5x a flat pixel's weight
        c.data.sizes = ((33, 64, 64), (9, 64, 64))
        c.data.size_weights = (0.5, 0.5)
        c.data.num_train = 2048
        c.train.batch_size = 2
        c.train.num_steps = 800
        c.train.learning_rate = 2e-4
        c.train.warmup_steps = 50
    else:  # tiny_vae: narrow, two downsamplings (4x space, 2x time), 5-frame 48x48 clips
        v.base_dim, v.z_dim = 4, 4
        v.edge_weight = 4.0  # the edge-weighted L1 of vae_edges, trained in the tests
        v.dim_mult, v.temperal_downsample = (1, 2, 2), (False, True)
        c.data.sizes = ((5, 48, 48),)
        c.data.num_train, c.data.num_validation = 16, 8
        c.train.num_steps, c.train.batch_size, c.train.warmup_steps = 4, 8, 1
        c.train.learning_rate = 3e-3
        c.train.log_every, c.train.checkpoint_every = 1, 2


def _dit(c: mlc.ConfigDict, arg: str) -> None:
    """The world DiT on the stage-2 VAE's latents: 144 tokens per 33-frame clip.

    Step cost, measured with 3 steps after compiling (random latents [32, 9, 8, 8, 16] in (1, 2, 2)
    patches, the same 144 tokens as [9, 16, 16, 8] in (1, 4, 4); script in docs/world.md): 6.5 CPU-seconds per step, i.e. about 3.3 s on
    2 idle cores at best (the machine was at load 26 from other jobs: 28 s wall).
    dit: 3,000 steps of 32 clips -> about 2 h 45 min, plus about 10 min to render and encode the
    8,192 clips; budget 3 h 15 min.
    dit_long: 1,000 more steps from dit's last (fresh schedule, peak 3e-4) -> about 55 min;
    budget 1 h."""
    c.autoencoder = 'checkpoints/world_vae'  # stage 2b exported (export.py --vae), in git
    c.latent_channels = 8  # = vae.z_dim
    c.text.max_length = 128  # two objects and a bar: captions are <= 120 bytes
    c.text.position = 'rope'
    c.model.patch_size = (1, 4, 4)  # [9, 16, 16] latents -> 9 x 4 x 4 = 144 tokens
    c.model.dim, c.model.num_heads, c.model.ffn_dim, c.model.depth = 256, 4, 1024, 8
    c.model.pooled_text = True
    c.model.zero_init = True
    c.flow.timestep_sampling = 'uniform'
    c.flow.shift = 3.0
    c.sample.shift = 3.0
    c.sample.num_frames, c.sample.height, c.sample.width = 33, 64, 64
    c.sample.fps = 16
    c.sample.display_scale = 2
    c.train.eval_prompts = EVAL_PROMPTS
    c.train.eval_num_videos = len(EVAL_PROMPTS)
    c.train.eval_every = 0
    c.train.batch_size = 32
    c.train.learning_rate = 6e-4
    c.train.warmup_steps = 200
    c.train.ema_decay = 0.998
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 2
    c.train.num_steps = 3000
    if arg == 'dit_long':
        c.train.init_from = 'workdirs/world_dit'
        c.train.num_steps = 1000
        c.train.learning_rate = 3e-4
        c.train.warmup_steps = 50
    elif arg == 'dit_causal':
        _causal(c, chunk=3)
    elif arg in ('tiny', 'tiny_causal'):  # pixel space, tiny model, 5-frame 48x48 clips
        if arg == 'tiny_causal':
            _causal(c, chunk=2)  # its objective and mask; the tiny schedule below wins
        c.autoencoder = 'none'
        c.latent_channels = 3
        c.data.sizes = ((5, 48, 48),)
        c.data.num_train, c.data.num_validation = 16, 8
        c.model.patch_size = (1, 8, 8)
        c.text.dim, c.text.depth = 32, 1
        c.model.dim, c.model.num_heads, c.model.ffn_dim, c.model.depth = 32, 2, 64, 2
        c.model.text_dim = 32
        c.train.num_steps, c.train.batch_size, c.train.warmup_steps = 4, 8, 1
        c.train.learning_rate = 3e-3
        c.train.log_every, c.train.checkpoint_every = 1, 2
        c.train.eval_num_videos, c.train.eval_prompts = 0, ()
        c.sample.num_frames, c.sample.height, c.sample.width, c.sample.steps = 5, 48, 48, 2
        if arg == 'tiny_causal':  # 6 pixel frames: 3 chunks of 2, trained from scratch
            c.train.init_from = ''
            c.data.sizes = ((6, 48, 48),)
            c.sample.num_frames = 6


def _causal(c: mlc.ConfigDict, chunk: int) -> None:
    """The causal stage: `dit_long` fine-tuned block-causal with diffusion forcing, so
    `pipeline/rollout.py` can sample chunk after chunk with a key/value cache (docs/long_video.md).

    Chunk 3: `model.causal_chunk` cuts the latent frames into equal chunks from frame 0 (the first
    latent frame, which the causal VAE codes alone, is simply the first frame of chunk 0), so it
    must divide the 9 latent frames of a 33-frame clip: 1, 3 or 9. 9 is one chunk (no causality
    to learn); 1 gives each clip 9 chunks but a first chunk of one latent frame (1 video frame)
    and 3x more rollout steps per second; 3 is CausVid's and Self-Forcing's num_frame_per_block,
    gives 3 chunks per clip (so every clip trains chunk 0, a chunk with one past chunk and one
    with two) and chunks of 12 video frames = 0.75 s at 16 fps (the first: 9 frames).

    Step cost, measured with 3 steps after compiling (random latents [32, 9, 8, 8, 16]: 144 tokens, as now; the
    snippet in docs/world.md with `dit_causal`): 6.7 CPU-seconds per step (dit: 6.5; the causal
    mask runs one attention call per chunk, diffusion forcing one forward), at load 11-14 from
    other jobs. dit_causal: 800 steps of 32 clips from dit_long's last (fresh schedule, peak
    1e-4) -> about 45 min on 2 idle cores at best, plus the latent encoding if `dit`'s cache
    is not reused (about 10 min); budget 1 h. Not trained yet."""
    c.objective = 'diffusion_forcing'  # a noise level per chunk (train/objectives/)
    c.model.causal_chunk = chunk  # latent frames per chunk of block-causal self-attention
    c.train.init_from = 'workdirs/world_dit_long'  # the full-attention model, its last step
    c.train.num_steps = 800  # a fine-tune: the weights already denoise, only the mask is new
    c.train.learning_rate = 1e-4  # a third of dit_long's peak: adapt, do not relearn
    c.train.warmup_steps = 50  # fresh optimizer state
