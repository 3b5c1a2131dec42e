"""VAE objective: KL sanity, loss terms, a gradient step lowers the loss, GAN gating."""

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
from flax import nnx

from sora_jax.evaluation.metrics import psnr
from sora_jax.models import vae as V
from sora_jax.train.objectives import vae as obj

pytestmark = pytest.mark.slow


def _config(**kw):
    c = mlc.ConfigDict()
    c.vae = mlc.ConfigDict(
        dict(
            dict(
                base_dim=4,
                z_dim=4,
                dim_mult=(1, 2),
                num_res_blocks=1,
                temperal_downsample=(True,),
                latents_mean=None,
                latents_std=None,
                kl_weight=1e-3,
                sample_posterior=True,
                disc_start=10,
                disc_weight=0.5,
                disc_dim=8,
                disc_layers=1,
            ),
            **kw,
        )
    )
    return c


@pytest.fixture(scope='module')
def config():
    return _config()


@pytest.fixture(scope='module')
def setup(config):
    model = obj.build_model(config, nnx.Rngs(0))
    disc = obj.build_discriminator(config, nnx.Rngs(1))
    video = jax.random.uniform(jax.random.key(2), (2, 3, 8, 8, 3), minval=-1.0, maxval=1.0)
    return model, disc, {'video': video}


def test_build_model_real_init(setup):
    model = setup[0]
    proj = model.encoder.mid_block.attentions[0].proj.kernel[...]
    assert float(jnp.max(jnp.abs(proj))) == 0.0  # zero-initialised like Wan: attention = identity
    conv = model.encoder.conv_in.kernel[...]
    assert conv.shape == (3, 3, 3, 3, 4) and float(jnp.std(conv)) > 0.05


def test_kl_zero_for_prior_and_positive_otherwise():
    zeros = jnp.zeros((2, 3, 4, 4, 4))
    np.testing.assert_array_equal(V.posterior_kl(zeros, zeros), [0.0, 0.0])
    mean = jax.random.normal(jax.random.key(0), zeros.shape)
    logvar = 0.5 * jax.random.normal(jax.random.key(1), zeros.shape)
    assert bool(jnp.all(V.posterior_kl(mean, logvar) > 0))
    # Closed form per element: 0.5 (mu^2 + sigma^2 - 1 - log sigma^2); mu = 1, sigma = 1 -> 0.5
    np.testing.assert_allclose(V.posterior_kl(zeros + 1.0, zeros), [0.5 * 192] * 2, rtol=1e-6)


def test_posterior_sample_statistics():
    mean, logvar = jnp.full((1, 20000), 2.0), jnp.full((1, 20000), np.log(0.25))
    z = V.posterior_sample(mean, logvar, jax.random.key(0))
    assert float(jnp.mean(z)) == pytest.approx(2.0, abs=0.02)
    assert float(jnp.std(z)) == pytest.approx(0.5, abs=0.02)


def _loss(graphdef, params, batch, rng, config, **kw):
    return obj.loss_fn(nnx.merge(graphdef, params), batch, rng, config, **kw)


def test_loss_terms(setup, config):
    model, _, batch = setup
    rng = jax.random.key(3)
    loss, m = jax.jit(lambda b, r: obj.loss_fn(model, b, r, config))(batch, rng)
    recon, mean, logvar = obj.reconstruct(model, batch['video'], rng, config)
    rec = float(jnp.mean(jnp.abs(recon - batch['video'])))
    kl = float(jnp.mean(V.posterior_kl(mean, logvar))) / (3 * 8 * 8 * 3)
    assert float(m['rec_loss']) == pytest.approx(rec, rel=1e-5)
    assert float(m['kl']) == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(rec + 1e-3 * kl, rel=1e-5)
    assert float(m['psnr']) == pytest.approx(
        float(psnr(jnp.clip(recon, -1, 1), batch['video'])), abs=1e-3
    )
    assert float(m['adv_loss']) == 0.0


def test_gradient_step_lowers_loss(setup, config):
    model, _, batch = setup
    graphdef, params = nnx.split(model, nnx.Param)
    rng = jax.random.key(4)  # same rng: the same posterior sample before and after
    f = jax.jit(jax.value_and_grad(lambda p: _loss(graphdef, p, batch, rng, config), has_aux=True))
    (loss0, _), grads = f(params)
    gnorm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
    assert float(gnorm) > 0
    new = jax.tree.map(lambda p, g: p - 0.05 * g / gnorm, params, grads)
    (loss1, _), _ = f(new)
    assert float(loss1) < float(loss0) - 1e-4, (float(loss0), float(loss1))


def test_adversarial_terms_switch_on_at_disc_start(setup, config):
    model, disc, batch = setup
    rng = jax.random.key(5)
    base, _ = obj.loss_fn(model, batch, rng, config)
    before, m_before = obj.loss_fn(model, batch, rng, config, step=9, disc=disc)
    after, m_after = obj.loss_fn(model, batch, rng, config, step=10, disc=disc)
    assert float(before) == pytest.approx(float(base), rel=1e-6)
    assert float(after) == pytest.approx(float(base) + 0.5 * float(m_after['adv_loss']), rel=1e-5)
    d_before, _ = obj.disc_loss_fn(disc, model, batch, rng, config, step=9)
    d_after, dm = obj.disc_loss_fn(disc, model, batch, rng, config, step=10)
    assert float(d_before) == 0.0
    # hinge loss of near-zero logits is ~ 0.5 * (1 + 1)
    assert float(d_after) == pytest.approx(
        0.5
        * (
            float(jnp.mean(jax.nn.relu(1 - disc(batch['video']))))
            + float(
                jnp.mean(
                    jax.nn.relu(1 + disc(obj.reconstruct(model, batch['video'], rng, config)[0]))
                )
            )
        ),
        rel=1e-5,
    )
    logits = disc(batch['video'])
    assert logits.shape == (2, 2, 2, 2, 1)  # [B, T/2, H/4, W/4, 1] with one strided layer
    # The discriminator's gradient step lowers its own loss.
    gd, dp = nnx.split(disc, nnx.Param)
    dl = lambda p: obj.disc_loss_fn(nnx.merge(gd, p), model, batch, rng, config, step=10)[0]
    g = jax.grad(dl)(dp)
    assert float(dl(jax.tree.map(lambda p, g: p - 0.01 * g, dp, g))) < float(d_after)


# ---- GAN inside the model (vae.use_gan): one loss, one optimizer ----------------------------


@pytest.fixture(scope='module')
def gan_setup():
    config = _config(use_gan=True)
    config.vae.disc_start = 0
    build = lambda: obj.build_model(config, nnx.Rngs(0))
    # One jitted init instead of hundreds of eager ops (the real init; eval_shape for the graph).
    model = nnx.merge(nnx.graphdef(nnx.eval_shape(build)), jax.jit(lambda: nnx.state(build()))())
    video = jax.random.uniform(jax.random.key(7), (2, 5, 8, 8, 3), minval=-1.0, maxval=1.0)
    return config, model, {'video': video}


def test_use_gan_builds_container_and_checks_disc_start(gan_setup):
    config, model, _ = gan_setup
    assert isinstance(model, obj.VAEWithDiscriminator)
    assert isinstance(obj.vae_of(model), V.WanVAE) and obj.vae_of(model) is model.vae
    shape_of = lambda c: nnx.eval_shape(lambda: obj.build_model(c, nnx.Rngs(0)))
    assert isinstance(shape_of(_config()), V.WanVAE)  # use_gan off
    assert isinstance(shape_of(_no_gan_weight()), V.WanVAE)  # disc_weight 0
    with pytest.raises(ValueError, match='disc_start=10'):
        shape_of(_config(use_gan=True))  # _config has disc_start=10


def _no_gan_weight():
    c = _config(use_gan=True)
    c.vae.disc_weight = 0.0
    return c


def test_joint_loss_gradients_split_by_player(gan_setup):
    config, model, batch = gan_setup
    rng = jax.random.key(8)
    graphdef, params = nnx.split(model, nnx.Param)
    total = lambda p: obj.loss_fn(nnx.merge(graphdef, p), batch, rng, config)
    (loss, m), g = jax.jit(jax.value_and_grad(total, has_aux=True))(params)

    # Discriminator: gradient of the total == gradient of disc_loss_fn alone.
    gd, dparams = nnx.split(model.disc, nnx.Param)
    d_only = lambda p: obj.disc_loss_fn(nnx.merge(gd, p), model.vae, batch, rng, config)[0]
    d_loss, g_d = jax.jit(jax.value_and_grad(d_only))(dparams)
    # Generator: gradient of the total == gradient of the generator loss alone.
    gv, vparams = nnx.split(model.vae, nnx.Param)
    g_only = lambda p: obj.loss_fn(nnx.merge(gv, p), batch, rng, config, disc=model.disc)[0]
    gen_loss, g_v = jax.jit(jax.value_and_grad(g_only))(vparams)

    assert float(m['disc_loss']) == pytest.approx(float(d_loss), rel=1e-5)
    assert float(m['gen_loss']) == pytest.approx(float(gen_loss), rel=1e-5)
    assert float(loss) == pytest.approx(float(d_loss) + float(gen_loss), rel=1e-5)
    assert float(m['adv_loss']) != 0.0 and float(d_loss) > 0.0
    flat = lambda t: jax.tree.leaves(t)
    for a, b in zip(flat(g['disc']), flat(g_d), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    for a, b in zip(flat(g['vae']), flat(g_v), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    # Both players really get a gradient (not all zero).
    assert float(sum(jnp.sum(jnp.abs(x)) for x in flat(g['disc']))) > 0
    assert float(sum(jnp.sum(jnp.abs(x)) for x in flat(g['vae']))) > 0


def test_inflate_from_image_codes_each_frame_like_an_image():
    """vae.inflate_from_image: after the warm-start edit, a spatial-only VAE codes a video frame by
    frame exactly as it codes single images (past-frame taps zero); without it, it does not."""
    c = _config(temperal_downsample=(False,), inflate_from_image=True)
    model = obj.build_model(c, nnx.Rngs(3))
    gd, params = nnx.split(model, nnx.Param)
    rest = nnx.state(model, nnx.Not(nnx.Param))
    video = jax.random.uniform(jax.random.key(4), (1, 3, 8, 8, 3), minval=-1.0, maxval=1.0)

    def per_frame_gap(p):
        m = nnx.merge(gd, p, rest)
        whole = m.decode(m.encode(video)[0], clip=False)
        frames = jnp.concatenate(
            [m.decode(m.encode(video[:, i : i + 1])[0], clip=False) for i in range(video.shape[1])],
            axis=1,
        )
        return float(jnp.abs(whole - frames).max())

    assert per_frame_gap(params) > 1e-3  # random past taps mix frames
    inflated = obj.adapt_warm_start(params, c)
    assert per_frame_gap(inflated) < 1e-5
    assert (
        float(
            jnp.abs(
                inflated['encoder']['conv_in']['kernel'][...][-1]
                - params['encoder']['conv_in']['kernel'][...][-1]
            ).max()
        )
        == 0.0
    )
    off = obj.adapt_warm_start(params, _config(temperal_downsample=(False,)))
    assert off is params  # the knob off: params untouched


def test_edge_weights_mark_objects_not_flat_or_smooth_regions():
    h = w = 32
    yy, xx = np.mgrid[:h, :w]
    smooth = np.stack([xx / w - 0.5, yy / h - 0.5, 0 * xx], -1)  # a gentle gradient
    frame = smooth.copy()
    frame[10:16, 20:26] = (1.0, -1.0, -1.0)  # a 6x6 red square
    video = jnp.asarray(frame, jnp.float32)[None, None]  # [1, 1, H, W, 3]
    wts = np.asarray(obj.edge_weights(video, 4.0))[0, 0, ..., 0]
    assert wts.shape == (h, w)
    assert np.allclose(wts[:4, :4], 1.0, atol=0.2)  # far from the square: about 1
    assert wts[10:16, 20:26].min() == pytest.approx(5.0)  # the whole square within radius 5
    assert wts[12, 10] < 1.2 and wts[12, 14] == pytest.approx(5.0)  # and 5 px around it
    flat = np.asarray(obj.edge_weights(jnp.zeros((1, 2, 8, 8, 3)), 4.0))
    assert np.all(flat == 1.0)


def test_edge_weighted_loss_counts_errors_near_edges_more(setup):
    model = setup[0]
    video = jnp.full((1, 3, 24, 24, 3), -0.5).at[:, :, 4:8, 4:8].set(0.8)  # a square, flat ground
    rng = jax.random.key(0)
    config = _config(sample_posterior=False, edge_weight=4.0)
    loss, m = obj.loss_fn(model, {'video': video}, rng, config)
    recon, mean, logvar = obj.reconstruct(model, video, rng, config)
    err = jnp.abs(recon - video)
    w = obj.edge_weights(video, 4.0)
    assert float(jnp.max(w)) == 5.0 and float(jnp.min(w)) == 1.0
    kl = float(jnp.mean(V.posterior_kl(mean, logvar))) / video[0].size
    expected = float(jnp.mean(w * err) / jnp.mean(w)) + 1e-3 * kl
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(m['rec_loss']) == pytest.approx(float(jnp.mean(err)), rel=1e-5)  # stays L1
    assert abs(float(loss) - float(m['rec_loss'])) > 1e-3  # and the loss is not plain L1
