"""Two real processes (jax.distributed on 127.0.0.1, gloo) read one 3-size dataset with the
default shard (jax.process_index / process_count): they draw the same clip size at every step,
also after a resume, from disjoint clips; and they encode one latent cache together (each its
own shard, real `sync_global_devices` barriers) that equals a single-process encode."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from sora_jax.data import latents as L
from sora_jax.data import pipeline as P
from sora_jax.data.builders import shapes as B
from tests.xla import xla_flags

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = ((4, 16, 16), (2, 8, 12), (6, 16, 8))
STEPS, RESUME_AT = 12, 5

SCRIPT = """
import json, sys
import numpy as np
from sora_jax.parallel import distributed
coordinator, pid, data_dir, cache, out = sys.argv[1:]
distributed.initialize(coordinator, 2, int(pid))
from sora_jax.data import latents as L, pipeline as P
from sora_jax.data.builders import shapes as B
from tests.parallel.test_multihost_data import CONFIG, KW, STEPS, RESUME_AT, encode
sources = B.build_shapes(data_dir, CONFIG)  # built by the test: only opened here
it = P.make_iterator(sources['train'], **KW)
batches = [next(it) for _ in range(STEPS)]
resumed = P.make_iterator(sources['train'], **KW)
it = P.make_iterator(sources['train'], **KW)
for _ in range(RESUME_AT):
    next(it)
resumed.set_state(json.loads(json.dumps(it.get_state())))
again = [next(resumed) for _ in range(STEPS - RESUME_AT)]
L.encode_dataset(sources, encode, cache, batch_size=4)
json.dump({'sizes': [list(b['video'].shape[1:4]) for b in batches],
           'ids': [b['id'].tolist() for b in batches],
           'resumed_ids': [b['id'].tolist() for b in again]}, open(out, 'w'))
"""
CONFIG = B.ShapesConfig(num_train=60, num_validation=6, sizes=SIZES, size_weights=(2, 1, 1))
KW = dict(batch_size=3, seed=11, tokenize=lambda s: np.frombuffer(s.encode()[:8], np.uint8) + 1)


def encode(video):
    """Stand-in VAE: 2x2 spatial means, [B, T, H, W, 3] -> [B, T, H/2, W/2, 3]."""
    b, t, h, w, c = video.shape
    return video.reshape(b, t, h // 2, 2, w // 2, 2, c).mean((3, 5))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('multihost_data')
    sources = B.build_shapes(tmp / 'tfds', CONFIG)
    script = tmp / 'reader.py'
    script.write_text(SCRIPT)
    env = dict(
        os.environ,
        JAX_PLATFORMS='cpu',
        XLA_FLAGS=xla_flags(1),
        PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
    )
    coordinator = f'127.0.0.1:{_free_port()}'
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                coordinator,
                str(i),
                str(tmp / 'tfds'),
                str(tmp / 'cache'),
                str(tmp / f'out{i}.json'),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:  # only our own children, by handle
            if p.poll() is None:
                p.kill()
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f'process {i} failed:\n{log[-4000:]}'
    outs = [json.loads((tmp / f'out{i}.json').read_text()) for i in range(2)]
    return sources, outs, str(tmp / 'cache'), tmp


def test_processes_draw_the_same_size_every_step(run):
    sources, (a, b), _, _ = run
    assert a['sizes'] == b['sizes'] and len({tuple(s) for s in a['sizes']}) >= 2
    plan = P.bucket_plan(sources['train'], 0, 2)
    assert [tuple(s) for s in a['sizes']] == [
        plan.sizes[P.bucket_for_step(KW['seed'], n, plan.counts)] for n in range(STEPS)
    ]
    for n in range(STEPS):
        assert not set(a['ids'][n]) & set(b['ids'][n])
        for i in a['ids'][n] + b['ids'][n]:
            assert list(B.size_for_index(CONFIG, 'train', i)) == a['sizes'][n]
    for out in (a, b):  # a restored iterator continues exactly
        assert out['resumed_ids'] == out['ids'][RESUME_AT:]


def test_processes_encode_one_cache_together(run):
    sources, _, cache, tmp = run
    assert json.load(open(os.path.join(cache, 'manifest.json')))['num_shards'] == 2
    assert os.path.isfile(os.path.join(cache, 'DONE'))
    one = L.encode_dataset(sources, encode, str(tmp / 'one'), batch_size=4)
    for split in ('train', 'validation'):
        x, y = L.open_split(cache, split), L.open_split(one, split)
        rx = {int(x[i]['id']): x[i]['latents'] for i in range(len(x))}
        ry = {int(y[i]['id']): y[i]['latents'] for i in range(len(y))}
        assert sorted(rx) == sorted(ry) and len(rx) == len(sources[split])
        for k in rx:
            np.testing.assert_array_equal(rx[k], ry[k])
    np.testing.assert_allclose(L.load_stats(cache)['mean'], L.load_stats(one)['mean'], rtol=1e-12)
    np.testing.assert_allclose(L.load_stats(cache)['std'], L.load_stats(one)['std'], rtol=1e-12)
