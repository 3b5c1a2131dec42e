"""`TextToVideo`: load a model family, then sample in named stages (as diffusers' Wan pipelines):

check_inputs       the call's options, defaults filled in and checked  -> SampleOptions
encode_prompt      prompts + negative prompts -> text context (B cond rows, B uncond rows)
prepare_condition  image / video -> frame mask, known latents (+ Wan I2V channels and tokens)
prepare_latents    the seeded noise (or `latents=`), v2v's noised start
denoise            the jitted guided sampler (`denoise.py`); non-finite latents are an error
decode             latents -> frames [B, T, H, W, 3] in [-1, 1] (the VAE, or pixel space)
finish             uint8, the invisible watermark
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from sora_jax.diffusion import conditioning as cond_lib
from sora_jax.diffusion import image_condition, samplers
from sora_jax.io import video as video_io
from sora_jax.models import denoiser
from sora_jax.models import quantize as quantize_lib
from sora_jax.models.frozen_vae import FrozenVAE
from sora_jax.pipeline import distill as distill_lib
from sora_jax.pipeline import loading, step_cache
from sora_jax.pipeline.denoise import DiTInputs, denoise
from sora_jax.pipeline.encoders import ByteText, CLIPImage
from sora_jax.pipeline.family import ModelFamily
from sora_jax.pipeline.options import DenoisePlan, SampleOptions, skip_guidance
from sora_jax.safety import moderation as moderation_lib
from sora_jax.safety import output_check
from sora_jax.safety import watermark as watermark_lib

MAX_FRAMES = 1024


class Condition(NamedTuple):
    """What `prepare_condition` hands the denoiser."""

    mask: jax.Array  # [B, T'] float32, 1 = known latent frame (v2v: zeros)
    known: jax.Array  # [B, T', h, w, C] clean latents of the known frames (v2v: the input's)
    keep_frames: int  # pixel frames returned (t2i: the first; loop: without the pinned tail)
    image_latents: jax.Array | None = None  # Wan 2.1 I2V channels [B, T', h, w, tf + C]
    image_tokens: jax.Array | None = None  # Wan 2.1 I2V CLIP tokens [B, S, D]


class TextToVideo:
    """Text encoder + DiT (+ optional VAE) of one `ModelFamily`: any sampler, CFG, frame-mask
    modes. Build it with `from_checkpoint`, `from_wan` or `from_config`."""

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
        *,
        family: ModelFamily | None = None,
        params_2=None,
    ):
        """`family`: None for the family `config` describes (shapes); `params_2`: the second
        expert's params (same graphdef) of a two-expert family. `image_encoder`: Wan 2.1 I2V's
        CLIP (None when its DiT takes no image tokens)."""
        self.config = config
        self.family = ModelFamily.of_config(config) if family is None else family
        if (params_2 is not None) != self.family.two_experts:
            raise ValueError(
                f'params_2 is {"set" if params_2 is not None else "None"} but the family has '
                f'boundary_ratio={self.family.boundary_ratio}; give both or neither.'
            )
        self.image_encoder = image_encoder
        self.graphdef, self.params, self.params_2 = dit_graphdef, dit_params, params_2
        self._base = (dit_graphdef, dit_params)  # the DiT without LoRAs (set_loras)
        self._base_2 = params_2  # the second expert as loaded (set_quantize)
        self.quantize: str | None = None  # 'int8' | 'fp8': the sampled weights (set_quantize)
        if quantize_lib.holds_quantized(dit_params):  # an int8 bundle: sampled as stored
            self.quantize = quantize_lib.qtype_name(dit_params)
            self._base = (dit_graphdef, jax.device_get(quantize_lib.dequantize(dit_params)))
        self._lora_merge = merge_loras
        self.loras: tuple[tuple[str, float], ...] = ()
        self.text = text
        self.vae = vae
        self._jit_denoise = jax.jit(
            functools.partial(denoise, tick=self._tick), static_argnames=('graphdef', 'plan')
        )
        self._bar = None
        self.last_cache_stats = None  # step_cache.CacheStats of the last call with a cache
        # Safeguards (docs/safety.md): on unless a call turns them off.
        self.moderation_policy = None  # None: $SORA_JAX_POLICY or sora_jax/safety/policy.json
        self.checkpoint_path, self.checkpoint_hash = None, None
        self.model_id = watermark_lib.model_id_from(str(config))  # until set_checkpoint
        self.user_key = int(os.environ.get('SORA_JAX_WATERMARK_KEY', '0'))
        if loras:
            self.set_loras(loras, merge=merge_loras)

    # The family's facts, read-only.
    patch = property(lambda self: self.family.patch)
    latent_channels = property(lambda self: self.family.latent_channels)
    conditioned = property(lambda self: self.family.frame_masks)
    prediction = property(lambda self: self.family.prediction)
    wan_i2v = property(lambda self: self.family.image_channels)
    expand_timesteps = property(lambda self: self.family.expand_timesteps)
    boundary_ratio = property(lambda self: self.family.boundary_ratio)

    def set_loras(self, loras: Sequence[tuple[str, float]] = (), merge: bool = True) -> None:
        """LoRA safetensors files [(path, scale), ...] (diffusers / PEFT or original-Wan layout,
        `convert/lora.py`) over the base DiT: merged into its kernels (`merge=True`, no cost per
        step) or kept as separate adapters; always applied to the base, so `set_loras([])`
        switches them off."""
        from sora_jax.convert import lora as lora_files

        if loras and self.family.two_experts:
            raise ValueError('LoRAs on a two-expert (Wan 2.2 A14B) model are not supported yet.')
        self.loras = tuple((os.fspath(p), float(s)) for p, s in loras)
        self._lora_merge = merge
        self.graphdef, params = lora_files.apply(
            *self._base, [lora_files.read(p, s) for p, s in self.loras], merge=merge
        )
        self.params = self._quantized(params)
        if self.loras:
            logging.info('LoRAs %s %s.', self.loras, 'merged' if merge else 'kept separate')

    def set_quantize(self, quantize: str | None) -> None:
        """Sample with weight-only quantized DiT block kernels: 'int8' or 'fp8' (e4m3, per output
        channel, through qwix: `models/quantize.py`), or None for the weights as loaded. The
        loaded weights move to host memory (LoRAs set later are merged into them, then
        quantized); the device keeps the quantized ones. Both experts of a two-expert model."""
        self.quantize = quantize_lib.check(quantize)
        if self.quantize:
            self._base = (self._base[0], jax.device_get(self._base[1]))
            self._base_2 = jax.device_get(self._base_2)
        self.set_loras(self.loras, merge=self._lora_merge)
        self.params_2 = self._quantized(self._base_2)
        if self.quantize:
            logging.info(
                'DiT weights %s: %.1f MB on the device.',
                self.quantize,
                quantize_lib.weight_bytes((self.params, self.params_2)) / 1e6,
            )

    def _quantized(self, params):
        """`params` (a DiT's) on the device, quantized when set_quantize asked for it."""
        if params is None or not self.quantize:
            return None if params is None else jax.device_put(params)
        return jax.device_put(quantize_lib.quantize_params(params, self.quantize))

    def set_checkpoint(self, path: str) -> None:
        """Records where the weights came from; the watermark's model id is its hash."""
        from sora_jax.safety import provenance

        self.checkpoint_path = os.fspath(path)
        self.checkpoint_hash = provenance.checkpoint_hash(path)
        self.model_id = watermark_lib.model_id_from(self.checkpoint_hash)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, *, ema: bool = True, quantize: str | None = None
    ) -> 'TextToVideo':
        """A training workdir (or shipped bundle): `<path>/checkpoints/<step>/`; a LoRA run loads
        its base with its adapters merged in. Non-finite weights are a ValueError. `quantize`:
        'int8' | 'fp8' weight-only DiT kernels (`set_quantize`), checked before loading."""
        quantize_lib.check(quantize)
        pipe = loading.from_checkpoint(cls, path, ema=ema)
        if quantize:
            pipe.set_quantize(quantize)
        return pipe

    @classmethod
    def from_config(cls, config, seed: int = 0, vae: FrozenVAE | None = None) -> 'TextToVideo':
        """Randomly initialised shapes-family model (tests, smoke runs)."""
        model = denoiser.build_model(config, nnx.Rngs(seed))
        return cls._from_denoiser(config, nnx.state(model, nnx.Param), vae)

    @classmethod
    def _from_denoiser(cls, config, params, vae) -> 'TextToVideo':
        """The shapes family from its Denoiser params {'dit': ..., 'text': ...}."""
        model = nnx.eval_shape(lambda: denoiser.build_model(config, nnx.Rngs(0)))
        text = ByteText(nnx.graphdef(model.text), params['text'], config.text.max_length)
        return cls(config, nnx.graphdef(model.dit), params['dit'], text, vae)

    @classmethod
    def from_wan(
        cls, path: str | os.PathLike, config=None, *, quantize: str | None = None
    ) -> 'TextToVideo':
        """A Wan 2.1 / 2.2 folder converted by experiments/convert_wan.py; `config` supplies the
        sampling defaults (configs/wan21.py, configs/wan22.py), e.g. UniPC, 50 steps, guidance 5,
        shift, negative prompt. A Wan 2.2 folder's model_index.json gives `boundary_ratio` (with
        `transformer_2/`) and `expand_timesteps`; config.sample.boundary_ratio, if set, wins.
        `quantize`: 'int8' | 'fp8' weight-only DiT kernels (`set_quantize`), checked first."""
        quantize_lib.check(quantize)
        pipe = loading.from_wan(cls, path, config)
        if quantize:
            pipe.set_quantize(quantize)
        return pipe

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
        last_image=None,
        sigmas=None,
        distill_preset: str | None = None,
        text_kv_cache: bool | None = None,
        cache=None,
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
        guidance_scale_2, else guidance_scale): the CFG scale of the low-noise expert.
        None means the config's default for every size and scale; 0 or a non-finite value is
        an error.
        `last_image` (mode='flf2v', a Wan first-and-last-frame model): the clip's last frame, as
        `image` is its first. Wan image-to-video models take an image of any size: it is
        resized (Lanczos, as diffusers' VideoProcessor) to height x width for the VAE while CLIP
        sees it as given; with height and width both None they follow the image's aspect ratio
        at the config's area (`image_condition.fit_area`, as the Wan examples do).
        `sigmas` (t_0 ... t_N = 0): the sampling times instead of the sampler's schedule of
        (num_inference_steps, shift). `distill_preset` (`pipeline/distill.py`, e.g.
        'lightx2v_4step'): the steps, times, guidance (1: no unconditional pass) and sampler a
        step-distilled LoRA was trained for; options left None take its values.
        `text_kv_cache` (default config.sample.text_kv_cache, on): every DiT block's
        cross-attention keys/values of the prompts (and I2V image tokens) computed once per call
        and reused at every step; False recomputes them each step (the same result).
        `cache` (default config.sample.cache, 'none'): a step cache, 'magcache' / 'firstblock' /
        'taylorseer' with config.sample's knobs or a `step_cache.StepCache`; DiT evaluations it
        skips are reported in `self.last_cache_stats` (`step_cache.CacheStats`) and the log."""
        if self.family.image_channels and image is not None and height is None and width is None:
            s = self.config.sample
            mod = self.spatial_factor * max(self.patch[1:])
            height, width = image_condition.fit_area(
                np.shape(image)[-3:-1], int(s.height) * int(s.width), mod
            )
        opts = self.check_inputs(
            prompt,
            num_frames=num_frames,
            height=height,
            width=width,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            sampler=sampler,
            shift=shift,
            seed=seed,
            mode=mode,
            strength=strength,
            guidance_interval=guidance_interval,
            skip_guidance_scale=skip_guidance_scale,
            skip_layers=skip_layers,
            skip_guidance_interval=skip_guidance_interval,
            output_type=output_type,
            progress=progress,
            moderation=moderation,
            watermark=watermark,
            guidance_scale_2=guidance_scale_2,
            sigmas=sigmas,
            distill_preset=distill_preset,
            text_kv_cache=text_kv_cache,
            cache=cache,
        )
        context, context_mask = self.encode_prompt(opts)
        cond = self.prepare_condition(opts, image, video, last_image)
        inputs = DiTInputs(
            cond.mask, cond.known, context, context_mask, cond.image_latents, cond.image_tokens
        )
        noise, t_start = self.prepare_latents(opts, cond, latents)
        lat = self.denoise(opts, inputs, noise, t_start)
        if opts.output_type == 'latent':
            return np.asarray(lat)
        return self.finish(self.decode(lat)[:, : cond.keep_frames], opts)

    # ------------------------------------------------------------------ stages
    def check_inputs(self, prompt, **kw) -> SampleOptions:
        """The call's keyword arguments (`__call__`'s names) -> SampleOptions, config.sample
        defaults filled in; a ValueError naming the first bad value. Applies the prompt
        moderation (or logs that it is off)."""
        s = self.config.sample
        if kw['output_type'] not in ('np', 'latent'):
            raise ValueError(f"output_type={kw['output_type']!r} must be 'np' or 'latent'.")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or any((not isinstance(p, str)) or not p.strip() for p in prompts):
            raise ValueError(
                f'prompt must be a non-empty string (or list of them), got {prompt!r}.'
            )
        if kw['moderation']:
            moderation_lib.Moderator.load(self.moderation_policy).enforce(prompts, mode=kw['mode'])
        else:
            logging.warning('Prompt moderation is OFF for this call (moderation=False).')
        negative_prompt = kw['negative_prompt']
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
        mode = kw['mode']
        if mode not in cond_lib.MODES:
            raise ValueError(f'mode={mode!r} is not one of {cond_lib.MODES}.')
        for name in ('num_frames', 'height', 'width'):  # None: the default; 0 is not "unset"
            v = kw[name]
            number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(
                v, bool
            )
            if v is not None and not (number and v > 0):
                raise ValueError(
                    f'{name}={v!r} must be a positive int (None: config.sample.{name}).'
                )
        num_frames = self.image_frames if mode == 't2i' else kw['num_frames']
        num_frames = int(s.num_frames if num_frames is None else num_frames)
        height = int(s.height if kw['height'] is None else kw['height'])
        width = int(s.width if kw['width'] is None else kw['width'])
        steps, sigmas, preset = kw['num_inference_steps'], kw.get('sigmas'), None
        quantization = s.get('timestep_quantization', None)
        if kw.get('distill_preset') is not None:
            preset = distill_lib.get(kw['distill_preset'])
            for name, v, want in (
                ('sigmas', sigmas, None),
                ('num_inference_steps', steps, preset.num_steps),
                ('shift', kw['shift'], preset.shift),
            ):
                if v is not None and v != want:
                    raise ValueError(
                        f'{name}={v!r} conflicts with distill_preset={preset.name!r} (its '
                        f'{name} is {want}); leave {name} unset.'
                    )
            sigmas = preset.sigmas()
            quantization = None  # LightX2V / FlowMatchEuler hand the DiT float timesteps
        if sigmas is not None:
            sigmas = distill_lib.check_sigmas(sigmas)
            if steps is not None and steps != len(sigmas) - 1:
                raise ValueError(
                    f'num_inference_steps={steps} but sigmas has {len(sigmas) - 1} steps; '
                    'leave num_inference_steps unset.'
                )
            if mode == 'v2v':
                raise ValueError("mode='v2v' starts at t = strength; it takes no sigmas.")
            steps = len(sigmas) - 1
        steps = int(s.steps if steps is None else steps)
        if steps < 1 or steps > 1000:
            raise ValueError(f'num_inference_steps={steps} must be in [1, 1000].')
        guidance = kw['guidance_scale']
        if guidance is None and preset is not None:
            guidance = preset.guidance_scale
        guidance = float(s.guidance_scale if guidance is None else guidance)
        guidance_2 = kw['guidance_scale_2']
        if guidance_2 is not None and not self.family.two_experts:
            raise ValueError(
                'guidance_scale_2 is only used by a two-expert (Wan 2.2 A14B) model; '
                'this one has a single transformer.'
            )
        guidance_2 = s.get('guidance_scale_2', None) if guidance_2 is None else guidance_2
        two = self.family.two_experts
        guidance_2 = guidance if guidance_2 is None or not two else float(guidance_2)
        strength = kw['strength']
        for name, v in (
            ('guidance_scale', guidance),
            ('guidance_scale_2', guidance_2),
            ('strength', strength),
        ):
            if not math.isfinite(float(v)):
                raise ValueError(f'{name}={v!r} must be a finite number.')
        method = kw['sampler']
        method = (preset.sampler if preset else s.sampler) if method is None else method
        if method not in samplers.METHODS:
            raise ValueError(f'sampler={method!r} is not one of {samplers.METHODS}.')
        shift = kw['shift'] if kw['shift'] is not None else preset.shift if preset else s.shift
        shift = float(shift)
        skip_scale, skip_layers, skip_interval = skip_guidance(
            s,
            self.family.depth,
            kw['skip_guidance_scale'],
            kw['skip_layers'],
            kw['skip_guidance_interval'],
        )
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f'strength={strength} must be in [0, 1].')
        cache = step_cache.resolve(kw.get('cache'), s, self.family.depth)
        if cache.on and skip_scale > 0:
            raise ValueError(
                f'cache={cache.kind!r} runs without skip-layer guidance; set '
                'skip_guidance_scale=0 or cache=None.'
            )
        return SampleOptions(
            prompts=tuple(prompts),
            negative_prompts=tuple(negs),
            mode=mode,
            num_frames=num_frames,
            height=height,
            width=width,
            latent_size=self.check_size(num_frames, height, width),
            num_inference_steps=steps,
            guidance_scale=guidance,
            guidance_scale_2=guidance_2,
            sampler=method,
            shift=shift,
            seed=kw['seed'],
            strength=strength,
            guidance_interval=tuple(map(float, kw['guidance_interval'])),
            skip_guidance_scale=skip_scale,
            skip_layers=skip_layers,
            skip_guidance_interval=skip_interval,
            timestep_quantization=quantization,
            output_type=kw['output_type'],
            progress=bool(kw['progress']),
            moderation=bool(kw['moderation']),
            watermark=bool(kw['watermark']),
            sigmas=sigmas,
            cache=cache,
            text_kv_cache=bool(
                s.get('text_kv_cache', True)
                if kw.get('text_kv_cache') is None
                else kw['text_kv_cache']
            ),
        )

    def encode_prompt(self, opts: SampleOptions):
        """(context [2B, L, D], mask [2B, L] | None): B conditional rows, then B unconditional."""
        return self.text(list(opts.prompts) + list(opts.negative_prompts))

    def prepare_condition(self, opts: SampleOptions, image, video, last_image=None) -> 'Condition':
        """The frames a mode conditions on, in latent space (`diffusion/conditioning.py`), or a
        Wan 2.1 I2V model's image channels and tokens (`diffusion/image_condition.py`)."""
        shape = (opts.batch, *opts.latent_size, self.latent_channels)
        if self.family.image_channels:
            return self._image_channels(opts, shape, image, video, last_image)
        if last_image is not None or opts.mode == 'flf2v':
            raise ValueError(
                f'mode={opts.mode!r} with last_image= needs a Wan image-to-video model; this '
                "model conditions on frames: use mode='connect' with video=(head, tail)."
            )
        fc = cond_lib.condition_from_frames(
            opts.mode,
            self.encode,
            shape,
            (opts.num_frames, opts.height, opts.width),
            image=image,
            video=video,
            temporal_factor=self.temporal_factor,
            first_frame_only=self.family.expand_timesteps,
        )
        return Condition(*fc)

    def prepare_latents(self, opts: SampleOptions, cond: 'Condition', latents=None):
        """(x_start [B, T', h, w, C], t_start): the seeded noise (or `latents`) at t = 1, or for
        v2v the input's latents noised to t = strength (SDEdit)."""
        shape = (opts.batch, *opts.latent_size, self.latent_channels)
        if latents is not None:
            noise = jnp.asarray(latents, jnp.float32)
            if noise.shape != shape:
                raise ValueError(f'latents have shape {noise.shape}; this call needs {shape}.')
        else:
            noise = jax.random.normal(jax.random.key(opts.seed), shape, jnp.float32)
        if opts.mode == 'v2v':
            return cond_lib.sdedit_start(cond.known, noise, opts.strength)
        return noise, 1.0

    def denoise(self, opts: SampleOptions, inputs: DiTInputs, x, t_start: float) -> jax.Array:
        """x [B, T', h, w, C] at t_start -> latents at t = 0 (t_start 0: x itself). Raises a
        ValueError when the result is not finite (a black video would follow)."""
        if t_start > 0.0:
            expand = self.family.expand_timesteps and bool(np.asarray(inputs.mask).any())
            plan = DenoisePlan(
                family=self.family,
                sampler=opts.sampler,
                num_steps=opts.num_inference_steps,
                shift=opts.shift,
                guidance_scale=opts.guidance_scale,
                guidance_scale_2=opts.guidance_scale_2,
                guidance_interval=opts.guidance_interval,
                t_start=float(t_start),
                timestep_quantization=opts.timestep_quantization,
                replace_known=bool(np.asarray(inputs.mask).any()) and not expand,
                expand_timesteps=expand,
                skip_guidance_scale=opts.skip_guidance_scale,
                skip_layers=opts.skip_layers,
                skip_guidance_interval=opts.skip_guidance_interval,
                progress=opts.progress,
                sigmas=opts.sigmas,
                text_kv_cache=opts.text_kv_cache,
                cache=opts.cache,
            )
            steps = opts.num_inference_steps
            with tqdm(total=steps, desc='sampling', disable=not opts.progress) as bar:
                self._bar = bar
                x, carry = self._jit_denoise(
                    self.params, self.params_2, x, inputs, graphdef=self.graphdef, plan=plan
                )
                x = jax.block_until_ready(x)
            self.last_cache_stats = None
            if carry is not None:
                self.last_cache_stats = step_cache.stats(opts.cache, carry)
                logging.info('%s', self.last_cache_stats)
        bad = int(x.size - jnp.count_nonzero(jnp.isfinite(x)))  # on device
        if bad:
            raise ValueError(
                f'sampling produced non-finite latents ({bad} of {x.size} values NaN/inf); '
                'check guidance_scale / LoRA scale / the checkpoint.'
            )
        return x

    def decode(self, latents: jax.Array) -> jax.Array:
        """latents [B, T', h, w, C] -> frames [B, T, H, W, 3] in [-1, 1] (identity in pixel
        space)."""
        return latents if self.vae is None else self.vae.decode(latents)

    def encode(self, pixels: jax.Array) -> jax.Array:
        """[B, T, H, W, 3] in [-1, 1] -> latents (identity in pixel space)."""
        return pixels if self.vae is None else self.vae.encode(pixels)

    def finish(self, frames: jax.Array, opts: SampleOptions) -> np.ndarray:
        """frames [B, T, H, W, 3] in [-1, 1] -> uint8, with the invisible watermark (unless
        turned off, or the frames are under 32x32). With moderation on, a sample of each
        clip's frames goes through the output check first (OutputRefused; safety/output_check)."""
        frames = self._to_uint8(frames)
        if opts.moderation:
            output_check.check_output(frames)
        if not opts.watermark:
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

    # ------------------------------------------------------------------ internals
    def _tick(self, *_):
        if self._bar is not None:
            self._bar.update(1)

    @staticmethod
    def _to_uint8(x) -> np.ndarray:
        return video_io.to_uint8(jax.device_get(x))

    def _image_channels(
        self, opts: SampleOptions, shape, image, video, last_image=None
    ) -> 'Condition':
        """Wan 2.1 I2V / FLF2V inputs as `WanImageToVideoPipeline` makes them: no frame mask, the
        channels [B, T', h, w, tf + C] of [image, zeros... (, last image)] (resized to the
        sampling size) and the CLIP tokens [B, S, D] ([B, 2S, D]: first, last) of the images as
        given."""
        flf = opts.mode == 'flf2v'
        if opts.mode not in ('i2v', 'flf2v') or image is None or video is not None:
            raise ValueError(
                f'mode={opts.mode!r}: this is a Wan image-to-video model; call it with '
                "mode='i2v' and image= (the first frame, [H, W, 3] or [B, H, W, 3]), or "
                "mode='flf2v' with image= and last_image=."
            )
        if flf != (last_image is not None):
            raise ValueError(
                "mode='flf2v' needs last_image= (the last frame), and only mode='flf2v' takes "
                f'it; got mode={opts.mode!r} with last_image={"set" if not flf else None}.'
            )
        pos_len = self.family.image_pos_len
        if self.image_encoder is not None and flf and not pos_len:
            raise ValueError(
                "mode='flf2v' needs a first-and-last-frame model (a DiT with the FLF2V image "
                'position table, diffusers pos_embed_seq_len, e.g. Wan2.1-FLF2V-14B-720P); this '
                "I2V model takes one image: use mode='i2v'."
            )
        if self.image_encoder is not None and pos_len and not flf:
            raise ValueError(
                'this is a first-and-last-frame (FLF2V) model: call it with '
                "mode='flf2v', image= and last_image=."
            )
        mask, known = cond_lib.build_condition('t2v', shape)
        imgs, pixels = image_condition.condition_video(
            image, opts.batch, opts.num_frames, opts.height, opts.width, last_image
        )
        lat = self.encode(jnp.asarray(pixels))
        y = image_condition.condition_channels(
            lat, opts.num_frames, self.temporal_factor, last_frame=flf
        )
        tokens = None
        if self.image_encoder is not None:  # [B, S, D] per image; FLF2V: [first; last]
            tokens = jnp.concatenate([self.image_encoder(x) for x in imgs], axis=1)
        return Condition(mask, known, opts.num_frames, y, tokens)
