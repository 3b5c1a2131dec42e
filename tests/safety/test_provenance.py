"""C2PA Content Credentials (sign, read back, tamper), the data record, the pipeline's defaults
and experiments/verify.py on a signed, marked file."""

import os

import numpy as np
import pytest

from sora_jax.io import video as video_io
from sora_jax.safety import moderation, provenance, record
from sora_jax.safety import watermark as wm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _config_home(tmp_path_factory, monkeypatch):
    monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path_factory.getbasetemp() / 'config'))


def _info(**kw):
    base = dict(
        checkpoint_hash='a' * 64,
        config_name='dit_p3',
        data_record_hash='b' * 64,
        watermark_payload={'model_id': 5, 'user_key': 6},
        disabled=[],
        prompt_moderated=True,
    )
    return provenance.manifest_info(**{**base, **kw})


def test_sign_read_and_tamper(tmp_path):
    clip = wm.embed(np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8), 5, 6)
    path = str(video_io.write_video(tmp_path / 'a.mp4', clip))
    assert provenance.sign(path, _info(disabled=['moderation'])) is True  # dev credentials
    r = provenance.read(path)
    assert r['valid'] and not r['errors'] and not r['trusted']
    assert r['actions'] == [('c2pa.created', provenance.TRAINED)]
    assert r['generation']['checkpoint_sha256'] == 'a' * 64
    assert r['generation']['data_record_sha256'] == 'b' * 64
    assert r['generation']['safeguards_disabled'] == ['moderation']
    assert r['signer']['issuer'].startswith('sora_jax development')
    data = bytearray(open(path, 'rb').read())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / 'bad.mp4'
    bad.write_bytes(bytes(data))
    rb = provenance.read(str(bad))
    assert rb['present'] and not rb['valid'] and any('mismatch' in e for e in rb['errors'])
    from sora_jax.safety import verify

    good, tampered = verify.verify(path), verify.verify(str(bad))
    assert (
        good['c2pa']['valid'] and good['watermark']['found'] and good['watermark']['user_key'] == 6
    )
    assert tampered['tampered'] and not verify.verify(path)['tampered']
    plain = str(video_io.write_video(tmp_path / 'plain.mp4', clip))
    assert provenance.read(plain)['present'] is False


def test_credentials_errors(tmp_path):
    with pytest.raises(ValueError, match='both a certificate chain and its key'):
        provenance.credentials(cert=str(tmp_path / 'c.pem'))
    with pytest.raises(ValueError, match='does not exist'):
        provenance.credentials(cert=str(tmp_path / 'c.pem'), key=str(tmp_path / 'k.pem'))
    with pytest.raises(ValueError, match='cannot sign'):
        provenance.sign(str(tmp_path / 'x.webm'), _info())


def test_data_record(tmp_path):
    clips = [
        {'id': 'b.mp4', 'license': 'cc-by-4.0', 'creator': 'Ana'},
        {'id': 'a.mp4', 'license': 'cc-by-4.0', 'creator': 'Ana'},
        {'id': 'c.mp4', 'license': 'cc0', 'creator': 'Luis', 'source': 'https://x'},
        {'id': 'd.mp4'},
    ]
    rec = record.build('video_folder:demo', '1.0.0', clips, skipped={'license': 1, 'opted_out': 2})
    assert rec['licenses'] == {'cc-by-4.0': 2, 'cc0': 1, 'unspecified': 1}
    assert rec['creators'] == [{'creator': 'Ana', 'clips': 2}, {'creator': 'Luis', 'clips': 1}]
    assert rec['skipped'] == {'license': 1, 'opted_out': 2}
    # the clip-id hash is order-free and changes when a clip is removed (an opt-out honoured)
    assert rec['clip_ids_sha256'] == record.build('x', '1', clips[::-1])['clip_ids_sha256']
    assert rec['clip_ids_sha256'] != record.build('x', '1', clips[1:])['clip_ids_sha256']
    record.write(str(tmp_path), rec)
    assert record.load(str(tmp_path)) == rec and record.load(str(tmp_path / 'none')) is None
    assert 'Ana: 2 clips' in record.describe(rec)
    shipped = record.load(os.path.join(REPO, 'checkpoints', 'shapes'))
    assert shipped['synthetic'] and shipped['creators'] == []


def test_pipeline_defaults(tmp_path):
    from configs import shapes as shapes_cfg
    from sora_jax.pipeline import TextToVideo

    cfg = shapes_cfg.get_config('tiny')
    cfg.sample.height = cfg.sample.width = 32
    pipe = TextToVideo.from_config(cfg)
    with pytest.raises(moderation.PromptRefused, match='graphic_violence'):
        pipe('a man being d3capitated', num_inference_steps=1, progress=False)
    kw = dict(num_inference_steps=1, progress=False, negative_prompt='gore, blood everywhere')
    marked = pipe('a red circle', **kw)  # a negative prompt is never refused
    plain = pipe('a red circle', watermark=False, **kw)
    assert marked.shape == plain.shape and marked.dtype == np.uint8
    assert wm.psnr(marked, plain) >= 40.0 and not np.array_equal(marked, plain)
    d = wm.detect(marked[0])
    assert d.found and (d.model_id, d.user_key) == (pipe.model_id, pipe.user_key)
    assert not wm.detect(plain[0]).found
    assert (
        not pipe(
            'a man being decapitated',
            moderation=False,
            watermark=False,
            num_inference_steps=1,
            progress=False,
        ).size
        == 0
    )


def _run_verify(path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, os.path.join(REPO, 'experiments', 'verify.py'), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, JAX_PLATFORMS='cpu'),
    )


def test_verify_tells_no_manifest_from_invalid_and_flags_a_missing_watermark(tmp_path):
    """A text file named .mp4 is "no manifest" (status 3), not "INVALID"; a valid manifest
    claiming a watermark the frames do not carry is flagged (status 4); a missing file is one
    line (status 5)."""
    text = tmp_path / 'notes.mp4'
    text.write_text('hello\n')
    r = _run_verify(text)
    assert r.returncode == 3, r.stdout + r.stderr
    assert 'C2PA: no manifest' in r.stdout and 'INVALID' not in r.stdout
    clip = np.random.default_rng(1).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    unmarked = str(video_io.write_video(tmp_path / 'unmarked.mp4', clip))
    provenance.sign(unmarked, _info(watermark_payload={'model_id': 5, 'user_key': 6}))
    r = _run_verify(unmarked)
    assert r.returncode == 4, r.stdout + r.stderr
    assert 'WARNING: the manifest claims a watermark the detector does not find' in r.stdout
    r = _run_verify(tmp_path / 'absent.mp4')
    assert r.returncode == 5 and r.stderr.count('ERROR:') == 1 and 'Traceback' not in r.stderr


def test_dev_credentials_are_private_whatever_the_umask(tmp_path, monkeypatch):
    import stat

    monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path / 'cfg'))
    old = os.umask(0)
    try:
        chain, key = provenance.dev_credentials()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)
    d = os.path.dirname(chain)
    assert mode(d) == 0o700 and mode(os.path.dirname(d)) == 0o700, oct(mode(d))
    assert mode(chain) == 0o644 and mode(key) == 0o600


def _fake_checkpoint(root, autoencoder):
    meta = root / 'checkpoints' / '7' / 'config'
    meta.mkdir(parents=True)
    (meta / 'metadata').write_text(f'{{"autoencoder": "{autoencoder}"}}')
    (root / 'checkpoints' / '7' / 'weights.bin').write_bytes(b'dit')
    return str(root)


def test_checkpoint_hash_covers_a_vae_outside_the_bundle(tmp_path):
    vae = tmp_path / 'elsewhere' / 'vae'
    vae.mkdir(parents=True)
    (vae / 'w.bin').write_bytes(b'vae one')
    bundle = _fake_checkpoint(tmp_path / 'a' / 'bundle', '../../elsewhere/vae')
    assert provenance.autoencoder_dir(bundle) == str(vae)
    before = provenance.checkpoint_hash(bundle)
    (vae / 'w.bin').write_bytes(b'vae two')
    assert provenance.checkpoint_hash(bundle) != before
    inside = _fake_checkpoint(tmp_path / 'b', 'vae')
    (tmp_path / 'b' / 'vae').mkdir()
    assert provenance.autoencoder_dir(inside) is None  # hashed as part of the bundle
    h = provenance.checkpoint_hash(inside)
    (tmp_path / 'b' / '.sora_jax.lock').write_text('{}')  # a training run's lock: not weights
    assert provenance.checkpoint_hash(inside) == h


def test_loras_enter_the_manifest_and_the_hash(tmp_path):
    lora = tmp_path / 'style.safetensors'
    lora.write_bytes(b'lora bytes')
    entries = provenance.lora_entries([(str(lora), 0.5)])
    assert entries == [
        {'file': 'style.safetensors', 'sha256': provenance.file_hash(str(lora)), 'scale': 0.5}
    ]
    info = _info(loras=entries, autoencoder='/elsewhere/vae')
    assert info['base_checkpoint_sha256'] == 'a' * 64
    assert info['checkpoint_sha256'] not in (
        'a' * 64,
        _info(loras=[{**entries[0], 'scale': 1.0}])['checkpoint_sha256'],
    )
    clip = wm.embed(np.random.default_rng(2).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8), 5, 6)
    path = str(video_io.write_video(tmp_path / 'l.mp4', clip))
    provenance.sign(path, info)
    g = provenance.read(path)['generation']
    assert g['loras'] == entries and g['autoencoder'] == '/elsewhere/vae'
    assert g['checkpoint_sha256'] == info['checkpoint_sha256']
