"""Install sora_jax. Core deps are pinned: the JAX/Flax/Orbax/Grain APIs move fast."""

from setuptools import find_packages, setup

CORE = [
    'jax==0.10.2',
    'jaxlib==0.10.2',
    'flax==0.12.8',
    'optax==0.2.8',
    'orbax-checkpoint==0.12.8',
    'grain==0.2.18',
    'array-record==0.8.6',
    'tensorflow-datasets==4.9.10',
    'ml-collections==1.1.0',
    'mediapy==1.2.7',
    # ffmpeg 7.0.2; 0.8.x ships ffmpeg 9 whose CLI rejects mediapy's '-vsync'.
    'imageio-ffmpeg==0.6.0',
    'einops>=0.8',
    'absl-py>=2.1',
    'tqdm>=4.66',
    'tensorboardX>=2.6',
    'safetensors>=0.4',
    'sentencepiece>=0.2',
    'numpy>=2.0',
    'Pillow>=10',
    'importlib_resources>=6',  # tensorflow-datasets imports it without declaring it
    'PyWavelets>=1.6',
    'scipy>=1.11',
    'c2pa-python==0.38.1',
    'cryptography>=42',  # safety/
    'snowballstemmer>=2.2',  # safety/moderation.py: English + Spanish stems (BSD)
    'PyStemmer>=2.2',  # the same stemmers in C, used by snowballstemmer (MIT/BSD)
    'qwix==0.1.8',  # models/quantize.py: int8 / fp8 weight-only sampling (Apache-2.0)
]

TEST = [
    'pytest>=8',
    'pytest-xdist>=3.5',
    'ruff==0.17.6',  # make lint, tests/test_style.py (one formatter version: pyproject.toml)
    'nbclient>=0.10',
    'nbformat>=5.10',
    'ipykernel>=6.29',
    # Tracking: tensorboard reads the event files back; wandb (offline) is an optional backend.
    'tensorboard>=2.16',
    'wandb>=0.17',
    # colabs/sweep_and_compare.ipynb: the summary table and the loss curves.
    'pandas>=2.0',
    'matplotlib>=3.8',
    # Parity references (torch: a CPU wheel from a local file; docs/testing.md).
    'torch==2.13.0',
    'diffusers==0.42.1',
    'transformers==5.24.0',
    'peft==0.21.2',  # diffusers' load_lora_weights (tests/parity/test_lora_parity.py)
    # Ahead-of-time TPU compiles in the tests (experiments/aot.py; no TPU needed).
    'libtpu==0.0.42.*',
]
# TPU VMs (and AOT compiles for TPU slices on any host): the libtpu that jax 0.10.2 pins.
TPU = ['libtpu==0.0.42.*']
# Output check (sora_jax/safety/output_check.py): NudeNet ships its detector's weights; its
# licence file is the AGPL-3.0, so it is an optional extra, never a core dependency.
NSFW = ['nudenet==3.4.2']

setup(
    name='sora_jax',
    version='0.1.0',
    description='Text-to-video diffusion over latent spacetime patches in JAX/Flax.',
    license='Apache-2.0',
    classifiers=['License :: OSI Approved :: Apache Software License'],
    packages=find_packages(include=['sora_jax', 'sora_jax.*']),
    python_requires='>=3.10',
    install_requires=CORE,
    package_data={'sora_jax.safety': ['*.json']},
    extras_require={'test': TEST, 'tpu': TPU, 'nsfw': NSFW},
)
