"""Converter mechanics: raw safetensors reader vs torch's, bf16 preserved, strict errors, Orbax;
then a whole tiny random Wan folder through experiments/convert_wan.py and `load_wan`."""

import collections
import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from sora_jax.convert import wan
from sora_jax.convert.safetensors import SafetensorsFolder
from sora_jax.io import checkpoint as ckpt_io
from sora_jax.models import umt5
from tests.parity.wan_fixture import make_tiny_wan_folder

HF_KW = dict(
    vocab_size=50,
    d_model=16,
    d_kv=4,
    num_heads=2,
    d_ff=24,
    num_layers=2,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    dropout_rate=0.0,
)


@pytest.fixture(scope='module')
def bf16_folder(tmp_path_factory):
    """A sharded bf16 UMT5 folder with both tied embedding keys, as some exports ship."""
    torch.manual_seed(0)
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**HF_KW)).to(torch.bfloat16)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp('te_bf16')
    keys = sorted(sd)
    shards = {
        'model-00001-of-00002.safetensors': keys[::2],
        'model-00002-of-00002.safetensors': keys[1::2],
    }
    weight_map = {}
    for fname, ks in shards.items():
        save_file({k: sd[k].clone() for k in ks}, str(folder / fname))
        weight_map.update({k: fname for k in ks})
    (folder / 'model.safetensors.index.json').write_text(json.dumps({'weight_map': weight_map}))
    (folder / 'config.json').write_text(model.config.to_json_string())
    return str(folder), sd


def _targets(folder):
    from flax import nnx

    cfg = umt5.UMT5Config.from_hf(folder)
    abstract = nnx.split(nnx.eval_shape(lambda: umt5.UMT5Encoder(cfg, rngs=nnx.Rngs(0))))[1]
    return cfg, wan.state_targets(abstract)


def test_raw_reader_matches_torch_reader_bitwise(bf16_folder):
    folder, sd = bf16_folder
    reader = SafetensorsFolder(folder)
    assert set(reader.keys()) == set(sd)
    for fname in os.listdir(folder):
        if not fname.endswith('.safetensors'):
            continue
        with safe_open(os.path.join(folder, fname), 'pt') as f:
            for k in f.keys():
                ours = reader.get(k)
                assert ours.dtype == ml_dtypes.bfloat16 and reader.dtype(k) == ours.dtype
                ref = f.get_tensor(k).view(torch.int16).numpy()
                np.testing.assert_array_equal(ours.view(np.int16), ref)


def test_bf16_preserved_and_layout(bf16_folder):
    folder, sd = bf16_folder
    cfg, targets = _targets(folder)
    flat = wan.convert(folder, wan.umt5_key_map(cfg.num_layers), targets)
    assert set(flat) == set(targets)
    assert all(v.dtype == ml_dtypes.bfloat16 for v in flat.values())
    bits = lambda t: t.view(torch.int16).numpy()
    q1 = sd['encoder.block.1.layer.0.SelfAttention.q.weight']  # [out, in]
    np.testing.assert_array_equal(flat['layers/q/kernel'][1].view(np.int16), bits(q1).T)
    wo0 = sd['encoder.block.0.layer.1.DenseReluDense.wo.weight']
    assert flat['layers/wo/kernel'].shape == (2, HF_KW['d_ff'], HF_KW['d_model'])
    np.testing.assert_array_equal(flat['layers/wo/kernel'][0].view(np.int16), bits(wo0).T)
    np.testing.assert_array_equal(
        flat['shared/embedding'].view(np.int16), bits(sd['shared.weight'])
    )
    f32 = wan.convert(folder, wan.umt5_key_map(cfg.num_layers), targets, dtype=np.float32)
    assert f32['layers/q/kernel'].dtype == np.float32
    np.testing.assert_array_equal(f32['layers/q/kernel'][1], q1.float().numpy().T)


def test_alias_used_when_primary_missing(tmp_path, bf16_folder):
    folder, sd = bf16_folder
    sd = dict(sd)
    shared = sd.pop('shared.weight')
    save_file(sd, str(tmp_path / 'model.safetensors'))
    (tmp_path / 'config.json').write_text(open(os.path.join(folder, 'config.json')).read())
    cfg, targets = _targets(str(tmp_path))
    flat = wan.convert(str(tmp_path), wan.umt5_key_map(cfg.num_layers), targets)
    np.testing.assert_array_equal(
        flat['shared/embedding'].view(np.int16), shared.view(torch.int16).numpy()
    )


def test_errors_list_unmapped_and_unfilled(tmp_path, bf16_folder):
    folder, sd = bf16_folder
    sd = {k: v for k, v in sd.items() if k != 'encoder.block.1.layer.1.DenseReluDense.wi_0.weight'}
    sd['encoder.block.0.layer.0.SelfAttention.extra.weight'] = torch.zeros(2)
    save_file(sd, str(tmp_path / 'model.safetensors'))
    cfg, targets = _targets(folder)
    with pytest.raises(ValueError) as err:
        wan.convert(str(tmp_path), wan.umt5_key_map(cfg.num_layers), targets)
    msg = str(err.value)
    assert 'encoder.block.0.layer.0.SelfAttention.extra.weight' in msg
    assert 'layers/wi_0/kernel[layers [1]]' in msg


def test_shape_mismatch_is_a_clear_error(bf16_folder):
    folder, _ = bf16_folder
    cfg, targets = _targets(folder)
    targets = dict(targets, **{'layers/q/kernel': ((2, 16, 16), None)})
    with pytest.raises(ValueError, match='layers/q/kernel.*config does not match'):
        wan.convert(folder, wan.umt5_key_map(cfg.num_layers), targets)


def test_orbax_round_trip_and_cli_component(tmp_path, bf16_folder):
    folder, _ = bf16_folder
    src = tmp_path / 'wan'
    os.makedirs(src)
    os.symlink(folder, src / 'text_encoder')
    wan.convert_folder(str(src), str(tmp_path / 'out'), ['text_encoder'])
    cfg, targets = _targets(folder)
    ref = wan.convert(folder, wan.umt5_key_map(cfg.num_layers), targets)
    back = ckpt_io.restore_flat(str(tmp_path / 'out' / 'text_encoder' / 'params'))
    assert set(back) == set(ref)
    for k in ref:
        assert back[k].dtype == ref[k].dtype
        np.testing.assert_array_equal(back[k].view(np.int16), ref[k].view(np.int16))
    assert os.path.exists(tmp_path / 'out' / 'text_encoder' / 'config.json')
    with pytest.raises(ValueError, match='not convertible'):
        wan.convert_folder(str(src), str(tmp_path / 'out'), ['unet'])


# ----------------------------------------------------------------------------- a whole Wan folder


REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


@pytest.fixture(scope='module')
def tiny_wan(tmp_path_factory):
    """The tiny random diffusers Wan folder, converted by the real CLI in a subprocess."""
    import subprocess
    import sys

    src = make_tiny_wan_folder(str(tmp_path_factory.mktemp('wan_src')))
    dst = str(tmp_path_factory.mktemp('wan_dst'))
    proc = subprocess.run(
        [sys.executable, 'experiments/convert_wan.py', f'--src={src}', f'--dst={dst}'],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return src, dst


def test_cli_writes_orbax_layout(tiny_wan):
    src, dst = tiny_wan
    assert sorted(os.listdir(dst)) == [
        'model_index.json',
        'text_encoder',
        'tokenizer',
        'transformer',
        'vae',
    ]
    for comp in wan.COMPONENTS:
        assert sorted(os.listdir(os.path.join(dst, comp))) == ['config.json', 'params']
        with (
            open(os.path.join(src, comp, 'config.json')) as a,
            open(os.path.join(dst, comp, 'config.json')) as b,
        ):
            assert json.load(a) == json.load(b)
    assert sorted(os.listdir(os.path.join(dst, 'tokenizer'))) == sorted(
        os.listdir(os.path.join(src, 'tokenizer'))
    )


def test_load_wan_params_equal_the_safetensors(tiny_wan):
    from flax import nnx

    from sora_jax.convert.checkpoint import load_wan
    from sora_jax.models.dit import DiT
    from sora_jax.models.umt5 import UMT5Encoder, UMT5Tokenizer
    from sora_jax.models.vae import WanVAE

    src, dst = tiny_wan
    models = load_wan(dst)
    assert isinstance(models.text_encoder, UMT5Encoder) and isinstance(models.transformer, DiT)
    assert isinstance(models.vae, WanVAE) and isinstance(models.tokenizer, UMT5Tokenizer)
    assert sorted(models.configs) == sorted(wan.COMPONENTS)
    n_arrays, n_expected = 0, 0
    for comp in wan.COMPONENTS:
        cfg, make, key_map = wan.component_spec(comp, os.path.join(src, comp))
        ref = wan.convert(
            os.path.join(src, comp), key_map, wan.state_targets(nnx.split(nnx.eval_shape(make))[1])
        )
        got = wan.state_targets(nnx.state(getattr(models, comp)))
        assert set(got) == set(ref)
        n_expected += len(ref)
        for path, arr in nnx.to_flat_state(nnx.state(getattr(models, comp))):
            np.testing.assert_array_equal(np.asarray(arr[...]), ref['/'.join(map(str, path))])
            n_arrays += 1
    assert n_arrays == n_expected >= 200
    # one spot check straight against the torch layout
    sd = safe_open(os.path.join(src, 'transformer', 'diffusion_pytorch_model.safetensors'), 'np')
    np.testing.assert_array_equal(
        np.asarray(models.transformer.blocks.attn1.to_q.kernel[...][1]),
        sd.get_tensor('blocks.1.attn1.to_q.weight').T,
    )


def test_load_wan_dtype_and_text_path_matches_transformers(tiny_wan):
    import jax.numpy as jnp

    from sora_jax.convert.checkpoint import load_wan
    from sora_jax.models.umt5 import encode_prompt, prompt_clean

    src, dst = tiny_wan
    bf16 = load_wan(dst, dtype=jnp.bfloat16)
    assert bf16.configs['transformer'].param_dtype == 'bfloat16'
    assert bf16.transformer.proj_out.kernel[...].dtype == jnp.bfloat16
    assert bf16.text_encoder.shared.embedding[...].dtype == jnp.bfloat16
    assert bf16.vae.decoder.conv_out.kernel[...].dtype == jnp.float32  # vae_dtype default

    models = load_wan(dst)
    prompts = ['A red circle moves to the left.', 'Un cuadrado verde gira &amp; para']
    ref_tok = transformers.AutoTokenizer.from_pretrained(os.path.join(src, 'tokenizer'))(
        [prompt_clean(p) for p in prompts],
        padding='max_length',
        max_length=20,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors='pt',
    )
    ids, mask = models.tokenizer(prompts, max_length=20)
    np.testing.assert_array_equal(ids, ref_tok['input_ids'].numpy())
    np.testing.assert_array_equal(mask, ref_tok['attention_mask'].numpy())
    te = transformers.UMT5EncoderModel.from_pretrained(os.path.join(src, 'text_encoder')).eval()
    with torch.no_grad():
        ref = te(ref_tok['input_ids'], ref_tok['attention_mask']).last_hidden_state.numpy()
    ref = ref * mask[..., None]  # Wan zeroes the padded positions
    out = np.asarray(encode_prompt(models.text_encoder, jnp.asarray(ids), jnp.asarray(mask)))
    assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())


def test_load_wan_errors(tmp_path, tiny_wan):
    from sora_jax.convert.checkpoint import load_wan

    _, dst = tiny_wan
    with pytest.raises(ValueError, match='does not exist'):
        load_wan(str(tmp_path / 'nope'))
    with pytest.raises(ValueError, match='holds none of'):
        load_wan(str(tmp_path))
    with pytest.raises(ValueError, match='unknown components'):
        load_wan(dst, overrides={'unet': {}})
    with pytest.raises(ValueError, match='does not exist'):
        wan.convert_folder(str(tmp_path), str(tmp_path / 'out'), ['vae'])


def test_reference_pipeline_loads_the_fixture(tiny_wan):
    from tests.parity.wan_fixture import load_reference_pipeline

    src, _ = tiny_wan
    pipe = load_reference_pipeline(src)
    assert pipe.vae.config.z_dim == pipe.transformer.config.in_channels == 4
    assert pipe.scheduler.config.prediction_type == 'flow_prediction'
    with torch.no_grad():
        emb = pipe.encode_prompt(
            'a red circle', do_classifier_free_guidance=False, max_sequence_length=16
        )[0]
    assert tuple(emb.shape) == (1, 16, pipe.text_encoder.config.d_model)


def test_load_wan_restores_straight_into_shardings(tiny_wan):
    """With a mesh (8 simulated devices: fsdp 2 x tensor 4) every parameter arrives in the
    sharding its logical axes give, holding the values of the plain single-device load."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from sora_jax.convert.checkpoint import load_converted, load_wan
    from sora_jax.parallel import mesh as mesh_lib

    _, dst = tiny_wan
    mesh = mesh_lib.make_mesh((1, 2, 4, 1))
    sharded, plain = load_wan(dst, mesh=mesh), load_wan(dst)
    dev0 = jax.devices()[0]
    n_leaves = n_split = 0
    total, on_dev0 = collections.Counter(), collections.Counter()
    for comp in wan.COMPONENTS:
        state = nnx.state(getattr(sharded, comp))
        want = nnx.to_flat_state(mesh_lib.state_shardings(state, mesh))
        ref = nnx.to_flat_state(nnx.state(getattr(plain, comp)))
        for (path, v), (_, sh), (_, r) in zip(nnx.to_flat_state(state), want, ref):
            arr, expected = v.get_value(), sh.get_value()
            assert arr.sharding.is_equivalent_to(expected, arr.ndim), (comp, path, arr.sharding)
            assert arr.dtype == r.get_value().dtype
            np.testing.assert_array_equal(np.asarray(arr), np.asarray(r.get_value()))
            n_leaves += 1
            n_split += not arr.sharding.is_fully_replicated
            total[comp] += arr.nbytes
            on_dev0[comp] += sum(s.data.nbytes for s in arr.addressable_shards if s.device == dev0)
    assert n_leaves >= 200 and n_split >= 30
    print(
        f'sharded load: {n_split}/{n_leaves} arrays split; bytes on device 0 / whole: '
        + ', '.join(f'{c} {on_dev0[c]:,} / {total[c]:,}' for c in wan.COMPONENTS)
    )
    assert on_dev0['transformer'] < 0.5 * total['transformer']
    _, dit = load_converted(dst, 'transformer', jnp.bfloat16, mesh=mesh)
    kernel = dit.blocks.attn1.to_q.kernel.get_value()
    assert kernel.dtype == jnp.bfloat16 and not kernel.sharding.is_fully_replicated
