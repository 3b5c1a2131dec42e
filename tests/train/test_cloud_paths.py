"""Workdir paths as etils.epath URIs: a fake `gs://` bucket (an fsspec filesystem registered for
the gs / gcs protocols, keeping its objects under a temporary directory, so no network) stands in
for Cloud Storage. `os.path` calls on such a path look at the local file `gs:/bucket/...` and
fail; the code under test must go through epath.

Covered: the run's data record, the tracker's metrics.jsonl and sample GIFs, the example-id log,
`train.init_from` checks, checkpoint-directory resolution (workdir vs bundle) and
`TextToVideo.from_checkpoint`'s existence check. Not covered (docs/training.md, "Cloud paths and multi-host"): Orbax
writes arrays through tensorstore's own gcs driver, array_record (tfds data, latent cache) opens
local files, and tensorboardX writes gs:// through google-cloud-storage; none of them goes through
fsspec, so a fake bucket cannot stand in for them here."""

import importlib
import os

import fsspec
import numpy as np
import pytest
from etils import epath
from fsspec.implementations.local import LocalFileSystem

from configs import shapes as shapes_config


class _FakeBucket(LocalFileSystem):
    """gs://<bucket>/<key> -> <root>/<bucket>/<key> on local disk."""

    protocol = ('gs', 'gcs')
    root = ''

    @classmethod
    def _strip_protocol(cls, path):
        path = str(path)
        if path.startswith(cls.root):
            return path
        for prefix in ('gs://', 'gcs://', 'gs:/'):
            if path.startswith(prefix):
                path = path[len(prefix) :]
                break
        return cls.root + '/' + path.lstrip('/')

    def _local_to_key(self, p):
        return p[len(self.root) + 1 :] if p.startswith(self.root) else p

    def glob(self, path, **kwargs):
        return [self._local_to_key(p) for p in super().glob(path, **kwargs)]

    def ls(self, path, detail=False, **kwargs):
        out = super().ls(path, detail=detail, **kwargs)
        if detail:
            return [dict(d, name=self._local_to_key(d['name'])) for d in out]
        return [self._local_to_key(p) for p in out]


@pytest.fixture(scope='module')
def bucket(tmp_path_factory):
    root = tmp_path_factory.mktemp('fake_gcs')
    _FakeBucket.root = str(root)
    registry = importlib.import_module('fsspec.registry')._registry
    old = {p: registry.get(p) for p in ('gs', 'gcs')}
    for p in ('gs', 'gcs'):
        fsspec.register_implementation(p, _FakeBucket, clobber=True)
    yield root
    for p, cls in old.items():
        registry.pop(p, None)  # back to the lazy gcsfs entry
        if cls is not None:
            fsspec.register_implementation(p, cls, clobber=True)
    _FakeBucket.clear_instance_cache()


def test_the_fake_bucket_is_not_a_local_path(bucket):
    p = epath.Path('gs://b/probe')
    p.mkdir(parents=True, exist_ok=True)
    (p / 'x.txt').write_text('hi')
    assert (bucket / 'b' / 'probe' / 'x.txt').read_text() == 'hi'
    assert (p / 'x.txt').exists() and not os.path.exists(os.path.join(os.fspath(p), 'x.txt'))


def test_data_record_and_example_ids(bucket):
    from sora_jax.safety import record
    from sora_jax.train.loop import _ExampleIdLog

    work = 'gs://b/run1'
    rec = record.build('shapes', '1.0.0', [{'id': 'a'}, {'id': 'b'}], synthetic=True)
    record.write_for_run(work, rec)
    assert record.load(work) == rec
    assert (bucket / 'b' / 'run1' / 'data_record.json').is_file()
    log = _ExampleIdLog(epath.Path(work) / 'example_ids.jsonl', 0)
    for step in (1, 2, 3):
        log.write(step, np.array([step, step + 10]), 0.5)
    _ExampleIdLog(epath.Path(work) / 'example_ids.jsonl', 2)  # a resume at step 2 drops step 3
    lines = (bucket / 'b' / 'run1' / 'example_ids.jsonl').read_text().splitlines()
    assert [line.split(',')[0] for line in lines] == ['{"step": 1', '{"step": 2']


def test_tracker_metrics_and_videos(bucket):
    from sora_jax.train import tracking

    c = shapes_config.get_config('tiny')
    c.train.log_to = ()  # tensorboardX's gs:// writer needs google-cloud-storage (not here)
    t = tracking.Tracker('gs://b/run2', c)
    t.scalars(2, {'loss': 1.5})
    t.scalars(4, {'loss': 1.0})
    frames = np.zeros((3, 4, 4, 3), np.uint8)
    paths = t.videos(4, {'samples/00': frames})
    t.close()
    assert [os.fspath(p) for p in paths] == ['gs://b/run2/samples/4/samples_00.gif']
    assert (bucket / 'b' / 'run2' / 'samples' / '4' / 'samples_00.gif').read_bytes()[
        :6
    ] == b'GIF89a'
    assert [m['loss'] for m in tracking.read_metrics('gs://b/run2')] == [1.5, 1.0]
    tracking.Tracker('gs://b/run2', c, start_step=2).close()  # resumed at 2: step 4 dropped
    assert [m['step'] for m in tracking.read_metrics('gs://b/run2')] == [2]


def test_checkpoint_dirs_and_init_from(bucket):
    from sora_jax.io import checkpoint as ckpt
    from sora_jax.train.validate import check_init_from

    (bucket / 'b' / 'bundle' / 'checkpoints' / '5').mkdir(parents=True)
    assert ckpt.checkpoint_dir('gs://b/bundle') == 'gs://b/bundle/checkpoints'
    assert ckpt.checkpoint_dir('gs://b/bundle/checkpoints') == 'gs://b/bundle/checkpoints'
    c = shapes_config.get_config('tiny')
    c.train.init_from = 'gs://b/bundle'
    check_init_from(c, 'gs://b/fresh')  # exists: fine
    c.train.init_from = 'gs://b/missing'
    with pytest.raises(ValueError, match='train.init_from'):
        check_init_from(c, 'gs://b/fresh')
    check_init_from(c, 'gs://b/bundle')  # a resumed run no longer reads init_from


def test_from_checkpoint_checks_the_uri(bucket):
    from sora_jax.pipeline import TextToVideo

    with pytest.raises(ValueError, match='gs://b/nothing/checkpoints does not exist'):
        TextToVideo.from_checkpoint('gs://b/nothing')


def _tiny_data(data_dir, staging_dir, **data):
    c = shapes_config.get_config('tiny')
    c.data.data_dir, c.data.staging_dir = data_dir, str(staging_dir)
    c.data.num_train, c.data.num_validation = 8, 2
    c.data.update(data)
    return c


def test_remote_data_dir_builds_locally_and_is_reused_from_the_bucket(
    bucket, tmp_path, monkeypatch
):
    from sora_jax.data import staging
    from sora_jax.data.builders import shapes as shapes_builder
    from sora_jax.train import sources as sources_lib

    c = _tiny_data('gs://b/data', tmp_path / 'mirror1')
    first = sources_lib.make_sources(c)
    assert {s: len(v) for s, v in first.items()} == {'train': 8, 'validation': 2}
    pushed = sorted(
        p.relative_to(bucket / 'b' / 'data').as_posix()
        for p in (bucket / 'b' / 'data').rglob('*')
        if p.is_file()
    )
    assert any(p.endswith('.array_record-00000-of-00001') for p in pushed), pushed
    assert not any('incomplete' in p for p in pushed)
    # A second machine (another mirror): the bucket's build is pulled, nothing is generated.
    monkeypatch.setattr(
        shapes_builder.SyntheticShapes,
        '_generate_examples',
        lambda *a, **k: pytest.fail('regenerated instead of pulling'),
    )
    c2 = _tiny_data('gs://b/data', tmp_path / 'mirror2')
    second = sources_lib.make_sources(c2)
    assert np.array_equal(second['train'][3]['video'], first['train'][3]['video'])
    assert staging.copy_missing(tmp_path / 'mirror2', 'gs://b/data') == []
    assert staging.Mirror('gs://b/data', str(tmp_path / 'mirror2')).pull() == []


def test_latent_cache_of_a_remote_data_dir(bucket, tmp_path, monkeypatch):
    """The latent cache is written in the mirror and pushed; a stand-in encoder (a 2x2 mean
    pool to 3 channels) instead of a VAE, so nothing compiles: the cache layout is the VAE's."""
    from sora_jax.models import frozen_vae
    from sora_jax.train import sources as sources_lib

    class Pool:
        step = 7

        @staticmethod
        def encode(video):  # [B, T, H, W, 3] in [-1, 1] -> [B, T, H/2, W/2, 3]
            b, t, h, w, ch = video.shape
            return np.asarray(video).reshape(b, t, h // 2, 2, w // 2, 2, ch).mean((3, 5))

    monkeypatch.setattr(frozen_vae, 'load', lambda path: Pool())
    c = _tiny_data('gs://b/data_latents', tmp_path / 'mirror')
    c.autoencoder = 'gs://b/some_vae'
    sources = sources_lib.make_sources(c)
    assert sources['train'][0]['latents'].shape == (4, 4, 4, 3)  # 4x8x8 clips, pooled
    (cache,) = (bucket / 'b' / 'data_latents' / 'latents').iterdir()
    assert (cache / 'DONE').is_file() and (cache / 'stats.json').is_file()
    assert (tmp_path / 'mirror' / 'latents' / cache.name / 'DONE').is_file()


def test_staging_dir_must_be_local():
    from sora_jax.data import staging

    with pytest.raises(ValueError, match='data.staging_dir'):
        staging.Mirror('gs://b/data', 'gs://b/mirror')
    assert staging.Mirror('data_cache').local == 'data_cache'  # local: used as it is


@pytest.mark.slow
def test_export_bundle_to_a_bucket(bucket, tmp_path):
    """experiments/export.py with a gs:// --dst: the bundle is completed locally, then copied."""
    import jax

    from sora_jax import export
    from sora_jax.parallel import mesh as mesh_lib
    from sora_jax.pipeline import TextToVideo
    from sora_jax.train import checkpoint as ckpt
    from sora_jax.train import loop
    from sora_jax.train.objectives import flow as flow_objective

    c = shapes_config.get_config('tiny')
    mesh = mesh_lib.make_mesh((1, 1, 1, 1), devices=jax.devices()[:1])
    _, state, *_ = loop.init_state(c, mesh, mesh_lib.rules_dict(), flow_objective)
    mngr = ckpt.manager(tmp_path / 'run' / 'checkpoints', async_save=False)
    ckpt.save(mngr, 3, state, config=c)
    mngr.wait_until_finished()
    (bucket / 'b' / 'bundle' / 'stale').mkdir(parents=True)  # an older bundle is replaced
    (bucket / 'b' / 'bundle' / export.MARKER).write_text('{}')  # (one export wrote)
    size = export.export_bundle(str(tmp_path / 'run'), 'gs://b/bundle', 'float16')
    files = sorted(
        p.relative_to(bucket / 'b' / 'bundle').as_posix()
        for p in (bucket / 'b' / 'bundle').rglob('*')
        if p.is_file()
    )
    assert 'data_record.json' in files and any(f.startswith('checkpoints/3/') for f in files)
    assert size == sum((bucket / 'b' / 'bundle' / f).stat().st_size for f in files)
    assert not (bucket / 'b' / 'bundle.sora_jax_new').exists() and 'stale' not in files
    pipe = TextToVideo.from_checkpoint(bucket / 'b' / 'bundle')  # the copied bytes load
    np.testing.assert_array_equal(  # float16 EMA weights, as a local export holds them
        np.asarray(jax.tree.leaves(pipe.params)[0]),
        np.asarray(jax.tree.leaves(state.ema_params['dit'])[0])
        .astype(np.float16)
        .astype(np.float32),
    )
