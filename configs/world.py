"""The world family: a VAE that compresses space, and a DiT on its latents that patches time and
space, trained on the physics world (sora_jax/data/world.py: one or two objects moving, bouncing,
falling or resting, an occluder, 33 frames of 64x64; docs/world.md).

Args (`--config=configs/world.py:ARG`):
  vae_image  stage 1: the causal VAE (4x space, 8 latent channels) on single frames of the world,
             warm-started from the shipped shapes VAE (checkpoints/shapes/vae: the same levels).
  vae_frames stage 2: stage 1 as a video VAE that codes every frame alone (no time compression:
             past-frame taps at 0), trained on with an edge-weighted L1 (vae.edge_weight) for the
             objects' corners and colours.
  dit        stage 3: byte text encoder + DiT on stage 2's latents of 33-frame clips:
             [33, 16, 16, 8] latents, (3, 4, 4) patches -> 11 x 16 = 176 tokens.
  dit_long   stage 4: `dit` trained on from its last step (fresh schedule, lower peak).
  dit_causal stage 5 (long videos, docs/long_video.md): `dit_long` fine-tuned block-causal
             (model.causal_chunk = 3 latent frames = 3 video frames) with diffusion forcing.
  tiny_vae, tiny, tiny_causal   tiny and fast: what tests/train/test_world_train.py trains.

Why time lives in the DiT, not the VAE: the objects are 9-13 px across and move up to a few px a
frame. A VAE that also compressed time 4x (9 latent frames) was trained for 2,600 steps and
reconstructed held-out clips at 29 dB, yet the judge, shown the truth after its round trip,
passed 5% of clips: objects smeared over the 4 frames a latent frame holds, squares read as
circles and red as orange, a small triangle faded out. Coding each frame alone with stage 1's
weights, untrained on video, passes 78% (docs/world.md). The DiT's (3, 4, 4) patches then do
the time compression, linearly, and the token count (176) stays near the 144 of 4x time.
Wan 2.1's 8x space (16 channels) failed earlier still: after 1,537 steps of stage 1 its frames
came back as grey blobs (objects off by 70 of 255 per channel, 22 dB).

The recipe on 2 CPU cores (each stage checkpoints every 250 steps and resumes exactly when its
command is run again):
  python experiments/train.py --config=configs/world.py:vae_image --workdir=workdirs/world_vae_image
  python experiments/train.py --config=configs/world.py:vae_frames --workdir=workdirs/world_vae_frames
  python experiments/export.py --vae=workdirs/world_vae_frames --dst=checkpoints/world_vae
  python experiments/train.py --config=configs/world.py:dit --workdir=workdirs/world_dit
  python experiments/train.py --config=configs/world.py:dit_long --workdir=workdirs/world_dit_long
  python experiments/train.py --config=configs/world.py:dit_causal --workdir=workdirs/world_dit_causal
  python experiments/export.py --dit=workdirs/world_dit_long --dst=checkpoints/world --dtype=int8
Each stage's command, wall time and result: docs/world.md.
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
    if arg in ('vae_image', 'vae_frames', 'tiny_vae'):
        c = shapes.get_config('tiny_vae')
        _world_data(c)
        _vae(c, arg)
    elif arg in ('dit', 'dit_long', 'dit_causal', 'tiny', 'tiny_causal'):
        c = shapes.get_config('dit_pixel')  # the unmodified base of the shapes family
        _world_data(c)
        _dit(c, arg)
    else:
        raise ValueError(
            f'configs/world.py: unknown arg {arg!r}; use vae_image, vae_frames, dit, dit_long, '
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
    """The world VAE: 4x space, 8 channels, the shipped shapes VAE's levels (base_dim 16,
    dim_mult (1, 2, 2)); vae_frames codes each frame alone (no time compression).

    Wall times (the stage table in docs/world.md): vae_image 800 steps of 16 single frames,
    12:43 plus 2 min to render the 8,192 scenes once; vae_frames 800 more, about 13 min."""
    v = c.vae
    v.base_dim = 16  # channels of the first level
    v.z_dim = 8  # latent channels
    v.dim_mult = (1, 2, 2)  # per level; 2 downsamplings -> 4x space
    v.temperal_downsample = (True, True)  # stage 1's run; unused on single frames
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
    elif arg == 'vae_frames':  # no time compression: stage 1's image VAE on every frame
        c.train.init_from = 'workdirs/world_vae_image'
        v.temperal_downsample = (False, False)  # time is left to the DiT's patches
        v.inflate_from_image = True  # past-frame taps 0: each frame coded alone; frames keep them 0
        v.edge_weight = 4.0
        c.data.sizes = ((1, 64, 64),)  # stage 1's data (its cache is reused)
        c.data.num_train = 8192
        c.train.batch_size = 16
        c.train.num_steps = 800
        c.train.learning_rate = 3e-4
        c.train.warmup_steps = 50
    else:  # tiny_vae: narrow, two downsamplings (4x space, 2x time), 5-frame 48x48 clips
        v.base_dim, v.z_dim = 4, 4
        v.edge_weight = 4.0  # the edge-weighted L1 of vae_frames, trained in the tests
        v.dim_mult, v.temperal_downsample = (1, 2, 2), (False, True)
        c.data.sizes = ((5, 48, 48),)
        c.data.num_train, c.data.num_validation = 16, 8
        c.train.num_steps, c.train.batch_size, c.train.warmup_steps = 4, 8, 1
        c.train.learning_rate = 3e-3
        c.train.log_every, c.train.checkpoint_every = 1, 2


def _dit(c: mlc.ConfigDict, arg: str) -> None:
    """The world DiT on stage 2's latents: [33, 16, 16, 8] per 33-frame clip, (3, 4, 4) patches,
    176 tokens of 3 x 4 x 4 x 8 = 384 values each.

    It predicts the clean latents (flow.prediction='data', trained with the velocity loss):
    near t = 1 a velocity is mostly noise, and a DiT no wider than its 384-value tokens cannot
    carry all of it. Predicting velocity, the first world DiT (256 wide, 8 deep) stopped at a
    flow loss of 0.6 and the second (384 wide, 4 deep) still sampled noise at step 1,000
    (docs/world.md). Depth 4 keeps the first one's step cost.

    Step cost (the script in docs/world.md, 2 idle cores): 8.1-8.4 CPU-seconds, 4.5-4.6 s of
    wall a step of 32 clips. dit: 3,000 steps, about 3.8 h, plus encoding the 8,192 clips once;
    dit_long: 3,000 more steps from dit's last (fresh schedule, peak 3e-4): at its step 3,000
    `dit` drew objects of the prompted colour in 58% of held-out clips, but they came and went
    from frame to frame (motion read in 4%). Measured wall times: docs/world.md."""
    c.autoencoder = 'checkpoints/world_vae'  # stage 2 exported (export.py --vae), in git
    c.latent_channels = 8  # = vae.z_dim
    c.text.max_length = 160  # the longest caption (es, two objects, a bar) is 147 UTF-8 bytes
    c.text.position = 'rope'
    c.model.patch_size = (3, 4, 4)  # [33, 16, 16] latents -> 11 x 4 x 4 = 176 tokens
    c.model.dim, c.model.num_heads, c.model.ffn_dim, c.model.depth = 384, 6, 1536, 4
    c.model.pooled_text = True
    c.model.zero_init = True
    c.flow.prediction = 'data'  # x0 out, velocity loss: its tokens are as wide as the DiT
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
        c.train.num_steps = 3000
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

    Chunk 3: `model.causal_chunk` cuts the latent frames into equal chunks from frame 0; it must
    be a multiple of the DiT's time patch (3) and divide the 33 latent frames of a clip: 3 or 33,
    and 33 is one chunk (no causality to learn). 3 latent frames = 3 video frames (the VAE codes
    frames alone) = one token frame: 11 chunks per clip, so every clip trains a first chunk and
    chunks with 1 to 10 past ones, and a rollout makes 3 frames (0.19 s at 16 fps) per chunk.

    Step cost at 176 tokens (the snippet in docs/world.md with `dit_causal`, 2 idle cores):
    9.3 CPU-seconds and 5.0 s of wall a step of 32 clips (dit: 8.1-8.4 and 4.5-4.6 in the same
    runs; the causal mask runs one attention call per chunk). dit_causal: 800 steps of 32 clips
    from dit_long's last (fresh schedule, peak 1e-4), `dit`'s latent cache reused."""
    c.objective = 'diffusion_forcing'  # a noise level per chunk (train/objectives/)
    c.model.causal_chunk = chunk  # latent frames per chunk of block-causal self-attention
    c.train.init_from = 'workdirs/world_dit_long'  # the full-attention model, its last step
    c.train.num_steps = 800  # a fine-tune: the weights already denoise, only the mask is new
    c.train.learning_rate = 1e-4  # a third of dit_long's peak: adapt, do not relearn
    c.train.warmup_steps = 50  # fresh optimizer state
