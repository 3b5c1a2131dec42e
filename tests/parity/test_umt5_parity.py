"""UMT5 encoder parity: transformers.UMT5EncoderModel (torch, f32) vs sora_jax, through the converter."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from sora_jax.convert import wan
from sora_jax.models import umt5

# Two random tiny configs: (HF kwargs, sequence length, save as shards?).
CONFIGS = {
    'small_buckets': (
        dict(
            vocab_size=100,
            d_model=32,
            d_kv=8,
            num_heads=4,
            d_ff=48,
            num_layers=2,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
        ),
        40,
        False,
    ),
    'wan_buckets': (
        dict(
            vocab_size=64,
            d_model=40,
            d_kv=12,
            num_heads=3,
            d_ff=56,
            num_layers=3,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
        ),
        160,
        True,
    ),
}


def _torch_model(kw, seed):
    torch.manual_seed(seed)
    cfg = transformers.UMT5Config(dropout_rate=0.0, attn_implementation='eager', **kw)
    model = transformers.UMT5EncoderModel(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains, so a swapped norm would show
        for name, p in model.named_parameters():
            if 'layer_norm' in name:
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
    return model


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def case(request, tmp_path_factory):
    kw, seq, sharded = CONFIGS[request.param]
    model = _torch_model(kw, seed=len(request.param))
    folder = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(folder, max_shard_size='20KB' if sharded else '10GB')
    return request.param, model, folder, seq


def _inputs(vocab, seq, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, size=(3, seq)).astype(np.int64)
    lengths = [seq, seq // 2, 5]
    mask = (np.arange(seq)[None] < np.array(lengths)[:, None]).astype(np.int64)
    ids[:, :][mask == 0] = 0
    return ids, mask


def test_saved_folder_layout(case):
    name, _, folder, _ = case
    files = os.listdir(folder)
    if CONFIGS[name][2]:
        assert 'model.safetensors.index.json' in files
        assert sum(f.endswith('.safetensors') for f in files) > 1
    else:
        assert 'model.safetensors' in files


def test_last_hidden_state_matches(case):
    name, model, folder, seq = case
    kw = CONFIGS[name][0]
    ids, mask = _inputs(kw['vocab_size'], seq)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).last_hidden_state.numpy()
    enc = wan.load_umt5(folder)
    out = np.asarray(jax.jit(lambda i, m: enc(i, m))(ids.astype(np.int32), mask.astype(np.int32)))
    assert out.shape == ref.shape == (3, seq, kw['d_model'])
    valid = mask.astype(bool)
    err = np.abs(out - ref)[valid].max() / max(1.0, np.abs(ref).max())
    print(f'{name}: max abs err (scaled) {err:.2e}, |ref| max {np.abs(ref).max():.2f}')
    assert err < 1e-4
    # encode_prompt zeroes padded positions and keeps the rest.
    zeroed = np.asarray(
        jax.jit(lambda i, m: umt5.encode_prompt(enc, i, m))(
            ids.astype(np.int32), mask.astype(np.int32)
        )
    )
    assert np.all(zeroed[~valid] == 0)
    np.testing.assert_allclose(zeroed[valid], out[valid], rtol=0, atol=1e-6)


def test_relative_buckets_match_hf(case):
    _, model, _, _ = case
    attn = model.encoder.block[0].layer[0].SelfAttention
    n = 700
    rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]
    ref = attn._relative_position_bucket(rel).numpy()
    ours = umt5.relative_position_buckets(
        n, n, attn.relative_attention_num_buckets, attn.relative_attention_max_distance
    )
    np.testing.assert_array_equal(ours, ref)


def test_every_layer_has_its_own_bias_table(case):
    _, model, folder, _ = case
    enc = wan.load_umt5(folder)
    tables = np.asarray(enc.layers.rel_bias.embedding[...])
    for i, block in enumerate(model.encoder.block):
        ref = block.layer[0].SelfAttention.relative_attention_bias.weight.detach().numpy()
        np.testing.assert_array_equal(tables[i], ref)
    assert not np.allclose(tables[0], tables[1])


def test_key_map_covers_both_sides(case):
    """Nothing silently left at init, nothing unused (maxdiffusion-style coverage)."""
    name, model, folder, _ = case
    with open(os.path.join(folder, 'config.json')) as f:
        cfg = umt5.UMT5Config.from_hf(json.load(f))
    key_map = wan.umt5_key_map(cfg.num_layers)
    torch_keys = set(model.state_dict())
    assert set(key_map.rules) | set(key_map.aliases) == torch_keys
    abstract = nnx.split(nnx.eval_shape(lambda: umt5.UMT5Encoder(cfg, rngs=nnx.Rngs(0))))[1]
    targets = wan.state_targets(abstract)
    assert {r.target for r in key_map.rules.values()} == set(targets)
    # every stacked slot is written exactly once
    slots = [(r.target, r.layer) for r in key_map.rules.values()]
    assert len(slots) == len(set(slots))
    for path, (shape, _) in targets.items():
        if path.startswith('layers/'):
            assert {l for t, l in slots if t == path} == set(range(shape[0]))


def test_tokenizer_matches_transformers(tmp_path):
    """Both backends give transformers' T5Tokenizer ids/mask under Wan's call (max_length pad)."""
    import sentencepiece as spm

    sents = [
        'A red circle moves left across a blue background.',
        'Un cuadrado verde gira lentamente sobre fondo negro.',
        'Two yellow triangles bounce up and down.',
    ]
    sp_dir, tj_dir = tmp_path / 'sp', tmp_path / 'tj'
    os.makedirs(sp_dir)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sents * 20),
        model_prefix=str(sp_dir / 'spiece'),
        vocab_size=40,
        model_type='unigram',
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    hf = transformers.T5Tokenizer.from_pretrained(str(sp_dir), extra_ids=10)
    hf.save_pretrained(str(tj_dir))
    assert os.path.exists(tj_dir / 'tokenizer.json')
    prompts = ['A red circle moves', sents[1] * 4, 'Two  yellow\ttriangles', '']
    ref = transformers.AutoTokenizer.from_pretrained(str(tj_dir))(
        [umt5.prompt_clean(p) for p in prompts],
        padding='max_length',
        max_length=24,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
    )
    for folder, backend in ((tj_dir, 'tokenizers'), (sp_dir, 'sentencepiece')):
        tok = umt5.UMT5Tokenizer.from_dir(str(folder))
        assert tok.backend == backend
        ids, mask = tok(prompts, max_length=24)
        np.testing.assert_array_equal(ids, np.array(ref['input_ids']))
        np.testing.assert_array_equal(mask, np.array(ref['attention_mask']))
    # sentinels are special tokens in tokenizer.json (as in umt5-xxl's)
    ids, _ = umt5.UMT5Tokenizer.from_dir(str(tj_dir))('red <extra_id_3> circle', max_length=12)
    assert hf.convert_tokens_to_ids('<extra_id_3>') in ids[0].tolist()
