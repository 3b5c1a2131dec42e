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

What differs between these families is one `ModelFamily` made at load time (family.py); the call
runs in named stages (text_to_video.py) over one `SampleOptions`; the jitted sampler is
denoise.py; loading is loading.py; the encoders are encoders.py.
"""

from sora_jax.pipeline.denoise import DiTInputs
from sora_jax.pipeline.encoders import ByteText, CLIPImage, UMT5Text
from sora_jax.pipeline.family import ModelFamily
from sora_jax.pipeline.loading import load_vae
from sora_jax.pipeline.options import DenoisePlan, SampleOptions
from sora_jax.pipeline.text_to_video import MAX_FRAMES, Condition, TextToVideo

__all__ = [
    'MAX_FRAMES',
    'ByteText',
    'CLIPImage',
    'Condition',
    'DenoisePlan',
    'DiTInputs',
    'ModelFamily',
    'SampleOptions',
    'TextToVideo',
    'UMT5Text',
    'load_vae',
]
