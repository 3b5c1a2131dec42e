"""TextToVideo: prompt(s) -> video frames. The one inference API that scripts and colabs use.

    pipe = TextToVideo.from_checkpoint('checkpoints/shapes')
    frames = pipe('a red circle moving to the left', num_frames=17, num_inference_steps=25,
                  guidance_scale=4.0, seed=0)          # uint8 [B, T, H, W, 3]

Modes (`mode=`): 't2v' (default), 't2i' (one frame), 'i2v' (`image=` is frame 0), 'extend'
(`video=` is the head, generate what follows), 'extend_backward' (`video=` is the tail),
'connect' (`video=(head, tail)`), 'loop' (`image=` starts and ends the clip), 'v2v' (SDEdit of
`video=` at `strength=`). Known frames are conditioned through frame masks in latent space
(`diffusion/conditioning.py`): as extra DiT input channels when the model was trained with
`conditioning.enabled`, and always by re-imposing the known latents along the noising path.

Two model families share this class: the shapes family (byte-level text encoder trained with
the DiT, our causal VAE; `from_checkpoint`) and Wan 2.1 converted weights (UMT5 + Wan DiT +
Wan VAE; `from_wan`). A text encoder is any callable prompts -> (context, mask | None).
Wan 2.2 folders add, as diffusers' `WanPipeline` runs them (settings from model_index.json):
two experts (A14B: `transformer` while the timestep >= boundary_ratio * 1000, then
`transformer_2` with `guidance_scale_2`) and per-token timesteps (TI2V, `expand_timesteps`: a
known first frame enters the DiT clean, its tokens at t = 0; mode='i2v' conditions on `image=`).
A Wan 2.1 image-to-video model (DiT input wider than its output) takes mode='i2v' only, driven as
diffusers' `WanImageToVideoPipeline`: CLIP image tokens (`CLIPImage`) and the channels of
`diffusion/image_condition.py` at every step, nothing re-imposed.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from tqdm import tqdm

from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.diffusion import flow, samplers
from sora_jax.io import checkpoint as ckpt
from sora_jax.io import video as video_io
from sora_jax.models import denoiser, frozen_vae
from sora_jax.models.frozen_vae import FrozenVAE
from sora_jax.models.text import ByteTokenizer
from sora_jax.safety import moderation as moderation_lib
from sora_jax.safety import watermark as watermark_lib

MAX_FRAMES = 1024


class ByteText:
    """The shapes family's byte-level encoder (its params live in the Denoiser checkpoint)."""

    def __init__(self, graphdef, params, max_length: int):
        self.graphdef, self.params = graphdef, params
        self.tokenizer = ByteTokenizer(max_length)
        self._encode = jax.jit(lambda p, ids: nnx.merge(graphdef, p)(ids, ids != 0))

    def __call__(self, prompts: Sequence[str]):
        ids, mask = self.tokenizer(list(prompts))
        return self._encode(self.params, jnp.asarray(ids)), jnp.asarray(mask)


class UMT5Text:
    """Wan's UMT5 encoder: padded to max_length, padded positions zeroed, no attention mask."""

    def __init__(self, module, tokenizer, max_length: int = 512):
        from sora_jax.models import umt5

        self.tokenizer, self.max_length = tokenizer, max_length
        graphdef, self.state = nnx.split(module)
        self._encode = jax.jit(
            lambda st, ids, m: umt5.encode_prompt(nnx.merge(graphdef, st), ids, m)
        )

    def __call__(self, prompts: Sequence[str]):
        ids, mask = self.tokenizer(list(prompts), max_length=self.max_length)
        return self._encode(self.state, jnp.asarray(ids), jnp.asarray(mask)), None


class CLIPImage:
    """Wan 2.1 I2V's image encoder: uint8 images [B, H, W, 3] -> CLIP features [B, 257, 1280]
    (the penultimate hidden state, after CLIPImageProcessor's resize / crop / normalise)."""

    def __init__(self, module, processor=None):
        from sora_jax.models.clip_preprocess import CLIPImageConfig

        self.processor = processor or CLIPImageConfig()
        graphdef, self.state = nnx.split(module)
        self._encode = jax.jit(lambda st, px: nnx.merge(graphdef, st).penultimate(px))

    def __call__(self, images: np.ndarray) -> jax.Array:
        from sora_jax.models import clip_preprocess

        return self._encode(
            self.state, jnp.asarray(clip_preprocess.preprocess(images, self.processor))
        )


class TextToVideo:
    """Text encoder + DiT (+ optional VAE): any sampler, CFG, frame-mask modes."""

    def __init__(
        self,
        config,
        dit_graphdef,
        dit_params,
        text,
        vae: FrozenVAE | None = None,
        loras: Sequence[tuple[str, float]] = (),
        merge_loras: bool = True,
        image_encoder: CLIPImage | None = None,
    ):
        self.config = config
        # Wan image-to-video: input channels [x_t, tf mask channels, image latents] (+ CLIP
        # image tokens when model.image_dim > 0, encoded by `image_encoder`).
        self.image_encoder = image_encoder
        self.wan_i2v = bool(config.get('image_condition', False))  # set by from_wan
        self.graphdef = dit_graphdef
        self.params = dit_params
        self._base = (dit_graphdef, dit_params)  # the DiT without LoRAs (set_loras)
        self.loras: tuple[tuple[str, float], ...] = ()
        self.text = text
        self.vae = vae
        # Wan 2.2 (from_wan, model_index.json): A14B's low-noise expert (params of the same
        # graphdef) and boundary ratio; TI2V's per-token timesteps for known frames.
        self.params_2, self.boundary_ratio, self.expand_timesteps = None, None, False
        self.patch = tuple(config.model.patch_size)
        self.latent_channels = int(
            config.get('latent_channels', config.model.get('out_channels', 3))
        )
        self.conditioned = bool(config.get('conditioning', {}).get('enabled', False))
        self.prediction = str(config.get('flow', {}).get('prediction', 'velocity'))
        self._jit_sample = jax.jit(
            self._sample,
            static_argnames=(
                'method',
                'num_steps',
                'shift',
                'guidance',
                'interval',
                't_start',
                'quantization',
                'replace',
                'skip_scale',
                'skip_layers',
                'skip_interval',
                'progress',
                'guidance_2',
                'boundary',
                'expand',
            ),
        )
        self._bar = None
        # Safeguards (README, "Safeguards and provenance"): on unless a call turns them off.
        self.moderation_policy = None  # None: $SORA_JAX_POLICY or sora_jax/safety/policy.json
        self.checkpoint_path, self.checkpoint_hash = None, None
        self.model_id = watermark_lib.model_id_from(str(config))  # until set_checkpoint
        self.user_key = int(os.environ.get('SORA_JAX_WATERMARK_KEY', '0'))
        if loras:
            self.set_loras(loras, merge=merge_loras)

    def set_loras(self, loras: Sequence[tuple[str, float]] = (), merge: bool = True) -> None:
        """LoRA safetensors files [(path, scale), ...] (diffusers / PEFT or original-Wan layout,
        `convert/lora.py`) over the base DiT: merged into its kernels (`merge=True`, no cost per
        step) or kept as separate adapters; always applied to the base, so `set_loras([])`
        switches them off."""
        from sora_jax.convert import lora as lora_files

        if loras and self.params_2 is not None:
            raise ValueError('LoRAs on a two-expert (Wan 2.2 A14B) model are not supported yet.')
        self.loras = tuple((os.fspath(p), float(s)) for p, s in loras)
        self.graphdef, self.params = lora_files.apply(
            *self._base, [lora_files.read(p, s) for p, s in self.loras], merge=merge
        )
        if self.loras:
            logging.info('LoRAs %s %s.', self.loras, 'merged' if merge else 'kept separate')

    def set_checkpoint(self, path: str) -> None:
        """Records where the weights came from; the watermark's model id is its hash."""
        from sora_jax.safety import provenance

        self.checkpoint_path = os.fspath(path)
        self.checkpoint_hash = provenance.checkpoint_hash(path)
        self.model_id = watermark_lib.model_id_from(self.checkpoint_hash)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *, ema: bool = True) -> 'TextToVideo':
        """A training workdir (or shipped bundle): `<path>/checkpoints/<step>/`."""
        path = os.fspath(path)
        cdir = epath.Path(path) / 'checkpoints'  # any etils.epath path (gs://...)
        if not cdir.is_dir():
            raise ValueError(
                f'{path!r} is not a checkpoint: {cdir} does not exist. Pass a '
                'training --workdir or checkpoints/shapes.'
            )
        config = ckpt.load_config(cdir)
        if config.get('lora', {}).get('rank', 0):  # a LoRA run: its base plus its adapters
            return cls._from_lora_run(path, config, ema)
        abstract = nnx.state(
            nnx.eval_shape(lambda: denoiser.build_model(config, nnx.Rngs(0))), nnx.Param
        )
        params, step = ckpt.restore_params(cdir, abstract, ema=ema)
        logging.info('Loaded %s params of step %d from %s', 'EMA' if ema else 'raw', step, path)
        vae = load_vae(config.autoencoder, relative_to=path)
        if vae is not None:
            vae = vae.with_stats(config.get('latent_mean', ()), config.get('latent_std', ()))
        pipe = cls._from_denoiser(config, params, vae)
        pipe.set_checkpoint(path)
        return pipe

    @classmethod
    def _from_lora_run(cls, path: str, config, ema: bool) -> 'TextToVideo':
        """A LoRA training workdir: the base it names (config.lora.base: a workdir / bundle, or a
        converted Wan folder, sampled with the run's config) with its adapters merged in
        (convert/lora_run.py)."""
        from sora_jax.convert import lora as lora_files
        from sora_jax.convert import lora_run

        base = config.lora.get('base', '')
        sha, _ = lora_run.base_fingerprint(base)
        if sha != config.lora.get('base_sha256', ''):
            raise ValueError(
                f'{path!r} was trained on base {base!r} whose files no longer hash '
                'the same; restore the original base to sample this LoRA run.'
            )
        from sora_jax.convert import checkpoint as converted

        if converted.is_converted(base):  # configs/wan21.py:lora_*: sampled as from_wan
            pipe = cls.from_wan(base, config)
        else:
            pipe = cls.from_checkpoint(base, ema=bool(config.train.get('init_from_ema', True)))
        adapter, step, _ = lora_run.read_adapter(path, ema=ema)
        pipe._base = lora_files.apply(*pipe._base, [adapter], merge=True)
        pipe.graphdef, pipe.params = pipe._base
        logging.info('LoRA run %s (step %d) merged into its base %s', path, step, base)
        pipe.set_checkpoint(path)
        return pipe

    @classmethod
    def from_config(cls, config, seed: int = 0, vae: FrozenVAE | None = None) -> 'TextToVideo':
        """Randomly initialised shapes-family model (tests, smoke runs)."""
        model = denoiser.build_model(config, nnx.Rngs(seed))
        return cls._from_denoiser(config, nnx.state(model, nnx.Param), vae)

    @classmethod
    def _from_denoiser(cls, config, params, vae) -> 'TextToVideo':
        model = nnx.eval_shape(lambda: denoiser.build_model(config, nnx.Rngs(0)))
        text = ByteText(nnx.graphdef(model.text), params['text'], config.text.max_length)
        return cls(config, nnx.graphdef(model.dit), params['dit'], text, vae)

    @classmethod
    def from_wan(cls, path: str | os.PathLike, config=None) -> 'TextToVideo':
        """A Wan 2.1 / 2.2 folder converted by experiments/convert_wan.py; `config` supplies the
        sampling defaults (configs/wan21.py, configs/wan22.py), e.g. UniPC, 50 steps, guidance 5,
        shift, negative prompt. A Wan 2.2 folder's model_index.json gives `boundary_ratio` (with
        `transformer_2/`) and `expand_timesteps`; config.sample.boundary_ratio, if set, wins."""
        from sora_jax.convert.checkpoint import load_wan

        m = load_wan(os.fspath(path))
        if m.transformer is None or m.text_encoder is None or m.tokenizer is None:
            raise ValueError(
                f'{os.fspath(path)!r} lacks transformer/, text_encoder/ or tokenizer/; '
                're-run experiments/convert_wan.py on the full Wan folder.'
            )
        dit_cfg = m.configs['transformer']
        if config is None:
            raise ValueError('from_wan needs the sampling config (configs/wan21.py:...).')
        config = config.copy_and_resolve_references()
        config.unlock()
        config.model.patch_size = tuple(dit_cfg.patch_size)
        config.latent_channels = int(dit_cfg.out_channels)
        vae = None
        if m.vae is not None:
            gd, st = nnx.split(m.vae)
            vae = FrozenVAE(gd, st, config)
        image_encoder = cls._wan_image_inputs(config, dit_cfg, m, path)
        graphdef, params = nnx.split(m.transformer)
        max_len = int(config.text.get('max_length', 512))
        pipe = cls(
            config,
            graphdef,
            params,
            UMT5Text(m.text_encoder, m.tokenizer, max_len),
            vae,
            image_encoder=image_encoder,
        )
        expand = config.sample.get('expand_timesteps', None)
        pipe.expand_timesteps = bool(
            m.pipeline.get('expand_timesteps', False) if expand is None else expand
        )
        if m.transformer_2 is not None:
            boundary = config.sample.get('boundary_ratio', None)
            boundary = m.pipeline.get('boundary_ratio') if boundary is None else boundary
            if boundary is None or not 0.0 < float(boundary) < 1.0:
                raise ValueError(
                    f'{os.fspath(path)!r} has transformer_2/ but boundary_ratio='
                    f'{boundary!r}; set sample.boundary_ratio in (0, 1) (0.875 for '
                    'Wan 2.2 T2V-A14B, 0.9 for I2V-A14B).'
                )
            graphdef_2, pipe.params_2 = nnx.split(m.transformer_2)
            if graphdef_2 != graphdef:
                raise ValueError(
                    'transformer_2/ differs from transformer/ in architecture; the '
                    'two experts must share one config.json.'
                )
            pipe.boundary_ratio = float(boundary)
        pipe.set_checkpoint(path)
        return pipe

    @staticmethod
    def _wan_image_inputs(config, dit_cfg, m, path) -> CLIPImage | None:
        """I2V (DiT input wider than its output): marks `config.image_condition` and returns the
        CLIP encoder the DiT's image tokens need (None for T2V or a DiT without image tokens)."""
        if dit_cfg.in_channels == dit_cfg.out_channels:
            return None
        config.image_condition = True
        config.model.in_channels = int(dit_cfg.in_channels)
        config.model.image_dim = int(dit_cfg.image_dim)
        if m.vae is None or dit_cfg.in_channels != 2 * dit_cfg.out_channels + 4:
            raise ValueError(
                f'{os.fspath(path)!r}: an image-to-video DiT needs vae/ and '
                f'in_channels = 2 x {dit_cfg.out_channels} + 4 (got '
                f'{dit_cfg.in_channels}).'
            )
        if not dit_cfg.image_dim:
            return None
        if m.image_encoder is None:
            raise ValueError(
                f'{os.fspath(path)!r} lacks image_encoder/ (CLIP), which this I2V '
                'DiT needs; re-run experiments/convert_wan.py on the full Wan I2V '
                'folder.'
            )
        return CLIPImage(m.image_encoder, m.image_processor)

    # ------------------------------------------------------------------ sizes
    @property
    def temporal_factor(self) -> int:
        return self.vae.temporal_factor if self.vae else 1

    @property
    def spatial_factor(self) -> int:
        return self.vae.spatial_factor if self.vae else 1

    @property
    def image_frames(self) -> int:
        """Frames sampled for mode='t2i' (the first is returned): 1, unless the DiT's temporal
        patch needs more latent frames (pixel-space models with patch t > 1)."""
        pt, tf = self.patch[0], self.temporal_factor
        return 1 + (pt - 1) * tf if tf > 1 else pt

    def check_size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Latent (T, H, W) for a pixel size, or a ValueError naming a valid size."""
        if not isinstance(num_frames, (int, np.integer)) or not 1 <= num_frames <= MAX_FRAMES:
            raise ValueError(f'num_frames={num_frames!r} must be an int in [1, {MAX_FRAMES}].')
        tf, sf = self.temporal_factor, self.spatial_factor
        pt, ph, pw = self.patch
        if tf > 1:
            if (num_frames - 1) % tf:
                k = max(1, round((num_frames - 1) / tf))
                raise ValueError(
                    f'num_frames={num_frames} is not 1 + {tf}k (causal VAE); use '
                    f'{1 + k * tf} (or 1 for an image).'
                )
            lt = 1 + (num_frames - 1) // tf
        else:
            lt = num_frames
        if lt % pt:
            raise ValueError(
                f'num_frames={num_frames} gives {lt} latent frames, not divisible by the '
                f'temporal patch {pt}; use {((lt + pt - 1) // pt) * pt * max(tf, 1)}.'
            )
        out = [lt]
        for name, n, p in (('height', height, ph), ('width', width, pw)):
            m = sf * p
            if not isinstance(n, (int, np.integer)) or n < m or n % m:
                raise ValueError(
                    f'{name}={n!r} must be a positive multiple of {m} (VAE factor {sf} '
                    f'x patch {p}); e.g. {max(m, (int(n) // m) * m if isinstance(n, int) else m)}.'
                )
            out.append(n // sf)
        return tuple(out)

    # ------------------------------------------------------------------ the call
    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        sampler: str | None = None,
        shift: float | None = None,
        seed: int = 0,
        mode: str = 't2v',
        image=None,
        video=None,
        strength: float = 0.7,
        guidance_interval=(0.0, 1.0),
        skip_guidance_scale: float | None = None,
        skip_layers=None,
        skip_guidance_interval=None,
        output_type: str = 'np',
        latents=None,
        progress: bool = True,
        moderation: bool = True,
        watermark: bool = True,
        guidance_scale_2: float | None = None,
    ) -> np.ndarray:
        """Returns uint8 frames [B, T, H, W, 3] (T = num_frames, less the pinned tail for 'loop'),
        or with output_type='latent' the sampled latents [B, T', h, w, C] (float32).
        `latents` (optional, [B, T', h, w, C]) replaces the seeded initial noise, as in diffusers.
        Skip-layer guidance (defaults from config.sample.skip_*): `skip_guidance_scale` p > 0 adds
        p (v_cond - v_weak) for t in `skip_guidance_interval`, v_weak being the conditional
        model with the DiT blocks `skip_layers` (indices) turned into the identity.
        Safeguards: `moderation` refuses prompts the content policy names (PromptRefused, a
        ValueError naming the category; negative prompts are exempt); `watermark` marks every
        returned frame with (self.model_id, self.user_key) (sora_jax/safety/watermark.py).
        Turning either off is logged.
        `guidance_scale_2` (two-expert Wan 2.2 A14B models only; default config.sample.
        guidance_scale_2, else guidance_scale): the CFG scale of the low-noise expert."""
        if output_type not in ('np', 'latent'):
            raise ValueError(f"output_type={output_type!r} must be 'np' or 'latent'.")
        s = self.config.sample
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any((not isinstance(p, str)) or not p.strip() for p in prompts):
            raise ValueError(
                f'prompt must be a non-empty string (or list of them), got {prompt!r}.'
            )
        if moderation:
            moderation_lib.Moderator.load(self.moderation_policy).enforce(prompts)
        else:
            logging.warning('Prompt moderation is OFF for this call (moderation=False).')
        if negative_prompt is None:
            negative_prompt = s.get('negative_prompt', '')
        negs = (
            [negative_prompt] * len(prompts)
            if isinstance(negative_prompt, str)
            else list(negative_prompt)
        )
        if len(negs) != len(prompts):
            raise ValueError(
                f'{len(negs)} negative prompts for {len(prompts)} prompts; give one or '
                'one per prompt.'
            )
        if mode not in cond_lib.MODES:
            raise ValueError(f'mode={mode!r} is not one of {cond_lib.MODES}.')
        if mode == 't2i':  # one frame, or the shortest clip the temporal patch allows
            num_frames = self.image_frames
        num_frames = int(s.num_frames if num_frames is None else num_frames)
        height = int(s.height if height is None else height)
        width = int(s.width if width is None else width)
        steps = int(s.steps if num_inference_steps is None else num_inference_steps)
        if steps < 1 or steps > 1000:
            raise ValueError(f'num_inference_steps={steps} must be in [1, 1000].')
        guidance = float(s.guidance_scale if guidance_scale is None else guidance_scale)
        if guidance_scale_2 is not None and self.params_2 is None:
            raise ValueError(
                'guidance_scale_2 is only used by a two-expert (Wan 2.2 A14B) model; '
                'this one has a single transformer.'
            )
        guidance_2 = (
            s.get('guidance_scale_2', None) if guidance_scale_2 is None else guidance_scale_2
        )
        guidance_2 = guidance if guidance_2 is None or self.params_2 is None else float(guidance_2)
        method = s.sampler if sampler is None else sampler
        if method not in samplers.METHODS:
            raise ValueError(f'sampler={method!r} is not one of {samplers.METHODS}.')
        shift = float(s.shift if shift is None else shift)
        skip_scale, skip_layers, skip_interval = self._skip_guidance(
            skip_guidance_scale, skip_layers, skip_guidance_interval
        )
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f'strength={strength} must be in [0, 1].')
        lt, lh, lw = self.check_size(num_frames, height, width)
        b = len(prompts)
        ctx, ctx_mask = self.text(prompts + negs)  # cond rows, then uncond rows
        latent_shape = (b, lt, lh, lw, self.latent_channels)

        y = image_ctx = None  # Wan I2V: extra input channels, CLIP image tokens
        if self.wan_i2v:
            (mask, known, keep), y, image_ctx = self._wan_i2v_condition(
                mode, b, num_frames, height, width, image, video
            )
        else:
            mask, known, keep = self._condition(mode, b, num_frames, height, width, image, video)
        if latents is not None:
            noise = jnp.asarray(latents, jnp.float32)
            if noise.shape != latent_shape:
                raise ValueError(
                    f'latents have shape {noise.shape}; this call needs {latent_shape}.'
                )
        else:
            noise = jax.random.normal(jax.random.key(seed), latent_shape, jnp.float32)
        t_start = 1.0
        expand = self.expand_timesteps and bool(np.asarray(mask).any())  # TI2V known frames
        if mode == 'v2v':
            noise, t_start = cond_lib.sdedit_start(known, noise, strength)
            mask = jnp.zeros_like(mask)
            if t_start == 0.0:
                return (
                    noise
                    if output_type == 'latent'
                    else self._finish(self._to_uint8(self._decode(noise))[:, :keep], watermark)
                )
        with tqdm(total=steps, desc='sampling', disable=not progress) as bar:
            self._bar = bar
            lat = self._jit_sample(
                self.params,
                ctx,
                ctx_mask,
                noise,
                mask,
                known,
                method=method,
                num_steps=steps,
                shift=shift,
                guidance=guidance,
                interval=tuple(map(float, guidance_interval)),
                t_start=float(t_start),
                quantization=s.get('timestep_quantization', None),
                replace=bool(np.asarray(mask).any()) and not expand,
                skip_scale=skip_scale,
                skip_layers=skip_layers,
                skip_interval=skip_interval,
                progress=bool(progress),
                params_2=self.params_2,
                guidance_2=guidance_2,
                boundary=self.boundary_ratio,
                expand=expand,
                y=y,
                image_ctx=image_ctx,
            )
            lat = jax.block_until_ready(lat)
        if output_type == 'latent':
            return np.asarray(lat)
        return self._finish(self._to_uint8(self._decode(lat))[:, :keep], watermark)

    # ------------------------------------------------------------------ internals
    def _finish(self, frames: np.ndarray, watermark: bool) -> np.ndarray:
        """uint8 [B, T, H, W, 3] -> the same with the invisible watermark (unless turned off)."""
        if not watermark:
            logging.warning('Watermark is OFF for this call (watermark=False).')
            return frames
        if min(frames.shape[2:4]) < 32:
            logging.warning(
                'Frames of %dx%d are too small to carry the watermark (32x32 at '
                'least); returned unmarked.',
                *frames.shape[2:4],
            )
            return frames
        return watermark_lib.embed(frames, self.model_id, self.user_key)

    def _tick(self, *_):
        if self._bar is not None:
            self._bar.update(1)

    def _skip_guidance(self, scale, layers, interval):
        """(scale, layer indices, interval) of skip-layer guidance, checked; scale 0 is off."""
        s = self.config.sample
        scale = float(s.get('skip_guidance_scale', 0.0) if scale is None else scale)
        layers = tuple(s.get('skip_layers', ()) if layers is None else layers)
        interval = tuple(
            map(
                float, s.get('skip_guidance_interval', (0.0, 1.0)) if interval is None else interval
            )
        )
        depth = int(self.config.model.depth)
        if scale < 0:
            raise ValueError(f'skip_guidance_scale={scale} must be >= 0 (0: off).')
        if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
            raise ValueError(
                f'skip_guidance_interval={interval} must be (t_lo, t_hi) with '
                '0 <= t_lo <= t_hi <= 1.'
            )
        if scale > 0:
            if not layers:
                raise ValueError(
                    'skip_guidance_scale > 0 needs skip_layers (DiT block indices, '
                    f'0..{depth - 1}), e.g. (2,).'
                )
            bad = [i for i in layers if not isinstance(i, (int, np.integer)) or not 0 <= i < depth]
            if bad:
                raise ValueError(
                    f'skip_layers={layers}: {bad} are not block indices 0..{depth - 1}.'
                )
        return scale, tuple(int(i) for i in layers) if scale > 0 else (), interval

    def _sample(
        self,
        params,
        ctx,
        ctx_mask,
        noise,
        mask,
        known,
        *,
        method,
        num_steps,
        shift,
        guidance,
        interval,
        t_start,
        quantization,
        replace,
        skip_scale=0.0,
        skip_layers=(),
        skip_interval=(0.0, 1.0),
        progress=True,
        params_2=None,
        guidance_2=None,
        boundary=None,
        expand=False,
        y=None,
        image_ctx=None,
    ):
        # progress: a host callback ticks the bar each step; JAX never writes a program with host
        # callbacks to the persistent compilation cache, so progress=False compiles a cacheable one.
        # params_2 / guidance_2 / boundary: Wan 2.2 A14B's low-noise expert
        # (`samplers.two_experts`).
        # expand: Wan 2.2 TI2V: known frames enter the DiT clean, their tokens at t = 0, and are
        # pasted into the result (diffusers' expand_timesteps), instead of `replace`.
        b = noise.shape[0]
        rows = 3 if skip_scale > 0 else 2
        mask2 = jnp.concatenate([mask] * rows, 0)
        known2 = jnp.concatenate([known] * rows, 0)
        ctx2, ctx_mask2, skip = ctx, ctx_mask, None
        if rows == 3:  # third block: the conditional rows again, through the weakened model
            ctx2 = jnp.concatenate([ctx, ctx[:b]], 0)
            ctx_mask2 = None if ctx_mask is None else jnp.concatenate([ctx_mask, ctx_mask[:b]], 0)
            weak = np.zeros((3 * b, self.config.model.depth), bool)
            weak[2 * b :, list(skip_layers)] = True
            skip = jnp.asarray(weak)

        # Wan I2V: every row (cond, uncond, weakened) sees the same image channels and tokens.
        y2 = None if y is None else jnp.concatenate([y] * rows, 0)
        img2 = None if image_ctx is None else jnp.concatenate([image_ctx] * rows, 0)

        def guided_by(dit, scale):  # the CFG (+ skip-layer) velocity of one DiT
            def velocity(x, t, m, k, c, cm, sk=None, yy=None, im=None):
                x_in, t_in = x, t
                if expand:
                    x_in = cond_lib.apply_known(x, m, k)
                    t_in = cond_lib.token_timesteps(t, m, x.shape, self.patch)
                elif self.conditioned:
                    x_in = cond_lib.model_input(x, m, k)
                if yy is not None:  # [x_t, mask channels, image latents] (image_condition.py)
                    x_in = jnp.concatenate([x, yy.astype(x.dtype)], axis=-1)
                kw = {} if im is None else {'image': im}
                return flow.to_velocity(
                    dit(x_in, t_in, c, cm, skip=sk, **kw), x, t, self.prediction
                )

            def model_fn(x, t):  # x: [2B or 3B, ...] cond rows, uncond rows (, weakened cond rows)
                if progress:
                    jax.debug.callback(self._tick, t[0])
                return velocity(x, t, mask2, known2, ctx2, ctx_mask2, skip, y2, img2)

            def cond_only(x, t):  # outside the guidance interval: conditional rows only
                b = x.shape[0]
                return velocity(
                    x,
                    t,
                    mask,
                    known,
                    ctx[:b],
                    None if ctx_mask is None else ctx_mask[:b],
                    None,
                    y,
                    image_ctx,
                )

            return samplers.cfg_velocity(
                model_fn,
                scale,
                interval,
                cond_fn=cond_only,
                skip_scale=skip_scale,
                skip_interval=skip_interval,
            )

        guided = guided_by(nnx.merge(self.graphdef, params), guidance)
        if params_2 is not None:
            low = guided_by(nnx.merge(self.graphdef, params_2), guidance_2)
            guided = samplers.two_experts(guided, low, boundary, quantization)
        # Known latents (if any) are re-imposed along their noising path after every step.
        callback = cond_lib.replace_callback(mask, known, noise) if replace else None
        lat = samplers.sample(
            guided,
            noise,
            method=method,
            num_steps=num_steps,
            shift=shift,
            t_start=t_start,
            step_callback=callback,
            timestep_quantization=quantization,
        )
        return cond_lib.apply_known(lat, mask, known) if expand else lat

    def _encode(self, pixels: jax.Array) -> jax.Array:
        """[B, T, H, W, 3] in [-1, 1] -> latents (identity in pixel space)."""
        return pixels if self.vae is None else self.vae.encode(pixels)

    def _decode(self, latents: jax.Array) -> jax.Array:
        return latents if self.vae is None else self.vae.decode(latents)

    @staticmethod
    def _to_uint8(x) -> np.ndarray:
        return video_io.to_uint8(jax.device_get(x))

    def _wan_i2v_condition(self, mode, b, num_frames, height, width, image, video):
        """Wan I2V inputs as `WanImageToVideoPipeline` makes them: ((zero mask, zero known,
        frames to keep), channels [B, T', h, w, tf + C], CLIP tokens [B, S, D] or None)."""
        from sora_jax.diffusion import image_condition

        if mode != 'i2v' or image is None or video is not None:
            raise ValueError(
                f'mode={mode!r}: this is a Wan image-to-video model; call it with '
                "mode='i2v' and image= (the first frame, [H, W, 3] or [B, H, W, 3])."
            )
        mask, known, _ = self._condition('t2v', b, num_frames, height, width, None, None)
        img = np.asarray(image)
        img = np.broadcast_to(img[None], (b, *img.shape)) if img.ndim == 3 else img
        if img.ndim != 4 or img.shape[0] != b or img.shape[1:] != (height, width, 3):
            raise ValueError(
                f'image has shape {img.shape}; expected [{height}, {width}, 3] or '
                f'[{b}, {height}, {width}, 3] (resize it to height x width).'
            )
        if img.dtype != np.uint8:  # [-1, 1] floats -> the 8-bit image CLIP's processor takes
            img = np.clip(np.round((img.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
        pixels = np.zeros((b, num_frames, height, width, 3), np.float32)
        pixels[:, 0] = img.astype(np.float32) / 127.5 - 1.0
        lat = self._encode(jnp.asarray(pixels))
        y = image_condition.condition_channels(lat, num_frames, self.temporal_factor)
        image_ctx = None if self.image_encoder is None else self.image_encoder(img)
        return (mask, known, num_frames), y, image_ctx

    def _condition(self, mode, b, num_frames, height, width, image, video):
        """(mask [B, T_lat], known latents [B, T_lat, h, w, C], frames to keep)."""
        tf = self.temporal_factor
        lt, lh, lw = self.check_size(num_frames, height, width)
        zeros = (
            jnp.zeros((b, lt), jnp.float32),
            jnp.zeros((b, lt, lh, lw, self.latent_channels), jnp.float32),
        )
        if mode in ('t2v', 't2i'):
            if image is not None or video is not None:
                raise ValueError(f"mode={mode!r} takes no image/video; use mode='i2v' or 'v2v'.")
            return (*zeros, 1 if mode == 't2i' else num_frames)
        buf = np.zeros((b, num_frames, height, width, 3), np.float32)

        def frames(x, name, ndim):
            if x is None:
                raise ValueError(f'mode={mode!r} needs {name}=.')
            x = np.asarray(x)
            if x.ndim == ndim:
                x = np.broadcast_to(x[None], (b, *x.shape))
            if x.ndim != ndim + 1 or x.shape[0] != b or x.shape[-3:-1] != (height, width):
                raise ValueError(
                    f'{name} has shape {x.shape}; expected {"[T, " if ndim == 4 else "["}'
                    f'{height}, {width}, 3] (resize it to height x width).'
                )
            return (
                x.astype(np.float32) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float32)
            )

        if mode == 'i2v' and self.expand_timesteps:  # Wan 2.2 TI2V: the image alone, encoded
            lat0 = self._encode(jnp.asarray(frames(image, 'image', 3))[:, None])  # [B, 1, h, w, C]
            mask_t = jnp.zeros((b, lt), jnp.float32).at[:, 0].set(1.0)
            return mask_t, zeros[1].at[:, :1].set(lat0), num_frames
        if mode in ('i2v', 'loop'):
            buf[:, 0] = frames(image, 'image', 3)
            plan = cond_lib.frame_plan(mode, num_frames, temporal_factor=max(tf, 1))
        elif mode == 'v2v':
            v = frames(video, 'video', 4)
            if v.shape[1] != num_frames:
                raise ValueError(
                    f'video has {v.shape[1]} frames; v2v needs num_frames={num_frames}.'
                )
            lat = self._encode(jnp.asarray(v))
            return zeros[0], lat, num_frames
        elif mode in ('extend', 'extend_backward'):
            v = frames(video, 'video', 4)
            k = v.shape[1]
            if k >= num_frames:
                raise ValueError(f'video has {k} frames; {mode} needs num_frames > {k}.')
            if mode == 'extend':
                buf[:, :k] = v
            else:
                buf[:, num_frames - k :] = v
            plan = cond_lib.frame_plan(
                mode, num_frames, temporal_factor=max(tf, 1), num_known_pixel_frames=k
            )
        elif mode == 'connect':
            if not isinstance(video, (tuple, list)) or len(video) != 2:
                raise ValueError("mode='connect' needs video=(head_frames, tail_frames).")
            head, tail = frames(video[0], 'video[0]', 4), frames(video[1], 'video[1]', 4)
            kh, kt = head.shape[1], tail.shape[1]
            if kh + kt >= num_frames:
                raise ValueError(
                    f'head ({kh}) + tail ({kt}) frames leave nothing to generate in '
                    f'num_frames={num_frames}.'
                )
            buf[:, :kh] = head
            buf[:, num_frames - kt :] = tail
            plan = cond_lib.frame_plan(
                mode, num_frames, temporal_factor=max(tf, 1), num_known_pixel_frames=(kh, kt)
            )
        else:
            raise ValueError(f'mode={mode!r} is not supported.')
        lat = self._encode(jnp.asarray(buf))
        mask_t = jnp.asarray(plan['latent_mask'], jnp.float32)
        if not bool(mask_t.any()):
            raise ValueError(
                f'mode={mode!r}: the given frames cover no whole latent frame; give '
                f'at least 1 + {tf}k frames.'
            )
        if mode == 'loop':
            lat = lat.at[:, -1].set(lat[:, 0])
        known = lat * mask_t[None, :, None, None, None]
        return jnp.broadcast_to(mask_t, (b, lt)), known, plan['keep_pixel_frames']


def load_vae(autoencoder: str, relative_to: str | None = None) -> FrozenVAE | None:
    """The frozen VAE named by config.autoencoder ('none' or a VAE checkpoint directory,
    absolute, relative to the DiT checkpoint (shipped bundles) or to the working directory)."""
    if autoencoder in (None, '', 'none'):
        return None
    path = autoencoder
    local = '://' not in path
    if (
        local
        and not os.path.isabs(path)
        and relative_to
        and (epath.Path(relative_to) / path).is_dir()
    ):
        path = os.fspath(epath.Path(relative_to) / path)
    return frozen_vae.load(path)
