"""Broken LoRA files are refused before any tensor is used, with the file's name in every error:
a truncated file, a header length larger than the file (not a bare MemoryError), a header that
is not JSON, a tensor whose bytes do not match its shape (not a reshape error), NaN values, a
non-finite --lora scale, and an adapter for another model size."""

import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import shapes as shapes_config
from sora_jax.convert import lora as lora_files


def _good(path, dim=32, rank=2, value=0.1):
    save_file(
        {
            'transformer.blocks.0.attn1.to_q.lora_A.weight': np.full(
                (rank, dim), value, np.float32
            ),
            'transformer.blocks.0.attn1.to_q.lora_B.weight': np.full(
                (dim, rank), value, np.float32
            ),
        },
        str(path),
    )
    return str(path)


def test_a_good_file_reads(tmp_path):
    ad = lora_files.read(_good(tmp_path / 'ok.safetensors'), 2.0)
    a, b = ad['attn1.to_q'][0]
    assert a.shape == (32, 2) and b.shape == (2, 32)
    np.testing.assert_allclose(b, 0.2, rtol=1e-6)


@pytest.mark.parametrize(
    'damage,message',
    [
        (lambda raw: raw[:5], 'too short for a header'),
        (lambda raw: struct.pack('<Q', 1 << 40) + raw[8:], 'its header claims 1099511627776 bytes'),
        (lambda raw: raw[:8] + b'{' * 8 + raw[16:], 'the header is not JSON'),
        (lambda raw: raw[:-100], 'data section'),
        (lambda raw: b'[]'.join([struct.pack('<Q', 2), b'']) + raw[10:], 'not a JSON object'),
    ],
)
def test_damaged_files_name_the_file(tmp_path, damage, message):
    path = _good(tmp_path / 'lora.safetensors')
    raw = open(path, 'rb').read()
    open(path, 'wb').write(damage(raw))
    with pytest.raises(ValueError, match=message) as e:
        lora_files.read(path)
    assert path in str(e.value)


def test_bytes_not_matching_the_shape(tmp_path):
    path = _good(tmp_path / 'lora.safetensors')
    raw = open(path, 'rb').read()
    (n,) = struct.unpack('<Q', raw[:8])
    header = raw[8 : 8 + n].replace(b'[2,32]', b'[3,32]', 1)
    assert len(header) == n
    open(path, 'wb').write(raw[:8] + header + raw[8 + n :])
    with pytest.raises(ValueError, match=r'of shape \[3, 32\] \(F32\) has 256 bytes') as e:
        lora_files.read(path)
    assert path in str(e.value)


def test_nan_values_are_refused(tmp_path):
    path = _good(tmp_path / 'nan.safetensors', value=np.nan)
    with pytest.raises(ValueError, match=r'nan.safetensors: .*lora_A.weight holds 64 non-finite'):
        lora_files.read(path)


@pytest.mark.parametrize('scale', ['nan', 'inf', '-inf'])
def test_non_finite_scale_is_refused(scale):
    with pytest.raises(ValueError, match=f"the scale '{scale}' is not a finite number"):
        lora_files.parse_spec(f'x.safetensors:{scale}')
    assert lora_files.parse_spec('x.safetensors:0.5') == ('x.safetensors', 0.5)
    assert lora_files.parse_spec('x.safetensors') == ('x.safetensors', 1.0)


def test_shapes_are_checked_against_the_model_with_the_file_name(tmp_path):
    from sora_jax.pipeline import TextToVideo

    pipe = TextToVideo.from_config(shapes_config.get_config('tiny'))
    kernels = lora_files.kernel_shapes(pipe.params)
    assert kernels['attn1.to_q'][1:] == (32, 32)
    path = _good(tmp_path / 'wide.safetensors', dim=64)
    with pytest.raises(ValueError, match=r'wide.safetensors: block 0 attn1.to_q is \[64 -> 64\]'):
        lora_files.check_fits(lora_files.read(path), kernels, path)
    lora_files.check_fits(lora_files.read(_good(tmp_path / 'ok.safetensors')), kernels, 'ok')
