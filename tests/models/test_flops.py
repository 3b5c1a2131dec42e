"""models/flops.py: one DiT FLOP count (6 N tokens + attention), the one that training logs
(train/perf.py), the AOT report and the benchmark all report; parallel/chips.py: one peak table."""

import jax
import pytest
from flax import nnx

from configs import shapes as shapes_config
from configs import wan21
from sora_jax.bench import dit as bench_dit
from sora_jax.models import flops
from sora_jax.models.dit import DiT, DiTConfig
from sora_jax.parallel import chips
from sora_jax.train import perf

CFG = dict(
    patch_size=(1, 2, 2),
    in_channels=4,
    out_channels=4,
    dim=32,
    num_heads=2,
    ffn_dim=64,
    depth=2,
    text_dim=16,
    freq_dim=256,
)


def test_hand_count():
    """B=2 clips of S=16 video tokens and L=4 text tokens, d=32, f=64, 2 blocks, patch 4 x 4 ch."""
    b, s, l, d, f, depth = 2, 16, 4, 32, 64, 2
    n_video = depth * (6 * d * d + 2 * d * f) + 4 * 4 * d + d * 4 * 4
    n_text = depth * 2 * d * d + 16 * d + d * d
    n_clip = 256 * d + d * d + 6 * d * d
    forward = 2 * b * (s * n_video + l * n_text + n_clip)
    attention = 4 * b * depth * d * (s * s + s * l)
    fl = flops.dit_flops(DiTConfig(**CFG), s, b, l, train=True)
    assert fl == (3 * forward, 3 * attention, 3 * (forward + attention))
    assert fl.mfu_flops == 3 * (forward + attention)
    fwd = flops.dit_flops(DiTConfig(**CFG), s, b, l, train=False)
    assert fwd == (forward, attention, forward + attention)
    remat = flops.dit_flops(DiTConfig(**CFG, remat='full'), s, b, l, train=True)
    assert remat.executed == 4 * (forward + attention) and remat.mfu_flops == fl.mfu_flops


def test_model_term_is_six_n_tokens_of_the_matmul_weights():
    """With no text tokens the model term is 6 x (DiT matmul weights) per token plus the
    per-clip time embedder: the weights counted are the DiT's own kernels (no bias, norm or
    modulation table)."""
    cfg = DiTConfig(**CFG)
    params = nnx.state(nnx.eval_shape(lambda: DiT(cfg, rngs=nnx.Rngs(0))), nnx.Param)
    kernels = sum(
        x.size for path, x in jax.tree_util.tree_leaves_with_path(params) if 'kernel' in str(path)
    )
    s = 16
    fl = flops.dit_flops(cfg, s, 1, 0, train=True)
    d = cfg.dim
    per_clip = 256 * d + d * d + 6 * d * d
    text_side = cfg.depth * 2 * d * d + cfg.text_dim * d + d * d  # applied to text tokens only
    assert fl.model == 6 * (s * (kernels - per_clip - text_side) + per_clip)


def test_config_forms_agree():
    """A DiTConfig, config.model as a ConfigDict and its dict give one count."""
    c = shapes_config.get_config('tiny')
    as_dataclass = DiTConfig.from_config(c.model)
    counts = {flops.dit_flops(m, 40, 3, 7) for m in (as_dataclass, c.model, c.model.to_dict())}
    assert len(counts) == 1


def test_training_log_aot_and_benchmark_agree():
    """The three consumers on one model: train/perf.py's logged FLOPs per step, the AOT report's
    per-chip figures x chips (what sora_jax/aot/report.py writes, from the same call) and the
    benchmark's model_flops_per_step are the same number."""
    opts = bench_dit.DiTBench(
        dim=32, heads=2, ffn_dim=64, depth=2, text_dim=16, text_len=8, channels=4,
        latent=(2, 4, 4), batch=3,
    )  # fmt: skip
    c = shapes_config.get_config('tiny')
    for k, v in dict(
        patch_size=(1, 2, 2), in_channels=4, out_channels=4, dim=32, num_heads=2, ffn_dim=64,
        depth=2, text_dim=16, freq_dim=256,
    ).items():  # fmt: skip
        c.model[k] = v
    c.text.max_length = 8
    logged = perf.Throughput(c, n_params=0).flops_per_step((3, 2, 4, 4, 4))
    bench = bench_dit.model_flops_per_step(opts)
    aot = flops.dit_flops(c.model.to_dict(), 2 * 2 * 2, 3, 8, train=True)  # report.build's call
    assert logged == bench == aot.model + aot.attention
    # the Wan 14B config at 720p: the training log's count for a real size
    w = wan21.get_config('t2v_14b')
    per_clip = 21 * 45 * 80
    fl = flops.dit_flops(w.model, per_clip, 1, 512)
    assert perf.Throughput(w, n_params=0).flops_per_step((1, 21, 90, 160, 16)) == fl.mfu_flops
    # 6 N tokens: N = the 14.29B parameters less the cross-attention k, v (on text tokens only)
    n_video = 14_288_491_584 - 40 * 2 * 5120**2
    assert fl.model == pytest.approx(6 * n_video * per_clip, rel=0.03)


@pytest.mark.parametrize(
    'kind,name',
    [
        ('TPU v5 lite', 'v5e'),
        ('TPU v5', 'v5p'),
        ('TPU v5p', 'v5p'),
        ('TPU v6 lite', 'v6e'),
        ('TPU v4', 'v4'),
        ('NVIDIA H100 80GB HBM3', 'h100'),
        ('NVIDIA H200', 'h200'),
        ('NVIDIA A100-SXM4-80GB', 'a100'),
        ('NVIDIA L4', 'l4'),
    ],
)
def test_one_peak_table(kind, name):
    chip = chips.for_device_kind(kind)
    assert chip is chips.CHIPS[name]
    c = shapes_config.get_config('tiny')
    c.train.peak_tflops_per_device = 0.0

    class Device:
        device_kind = kind

    assert perf.peak_tflops(c, Device()) == chip.bf16_flops / 1e12


def test_unknown_device_has_no_peak():
    assert chips.for_device_kind('cpu') is None
    c = shapes_config.get_config('tiny')
    c.train.peak_tflops_per_device = 0.0

    class Device:
        device_kind = 'cpu'

    assert perf.peak_tflops(c, Device()) is None
