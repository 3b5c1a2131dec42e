"""The TPU table of the docs: experiments/aot.py over Wan sizes x slices x tasks, one process per
compile, written as <out>/<row>.json plus <out>/table.md.

  for name in names: run_row(name, 'docs/aot', force=False)   # CLI: experiments/aot_table.py
  table('docs/aot')

Each row lists mesh layouts to try, in order; the first that leaves MIN_HEADROOM of HBM free is
kept (every attempt's report stays as <row>__<k>.json). Rows whose JSON exists are skipped unless
`force`. Each compile runs in its own process (experiments/aot.py) so one row's memory is freed
before the next.
"""

import glob
import json
import os
import subprocess
import sys

from sora_jax.config_files import REPO_ROOT

# The compile CLI (the reports' `command` records it relative to the working directory).
AOT_SCRIPT = REPO_ROOT / 'experiments' / 'aot.py'

R480, R720 = (81, 480, 832), (81, 720, 1280)
M = lambda *s: '(' + ','.join(map(str, s)) + ')'
# row -> (config arg, task, (frames, h, w), topology, [(mesh, batch), ...], extra flags); the
# config arg is configs/wan21.py's unless it names its file ('wan22.py:ti2v_5b')
ROWS = {}
# Parameters over fsdp x sequence: with sequence parallelism every chip still holds 1/n of the
# weights and optimizer state (the default rules shard them over fsdp only).
FS = ["--config.mesh.rules=(('embed', ('fsdp', 'sequence')),)"]
for size, arg in (('1.3b', 't2v_1.3b'), ('14b', 't2v_14b')):
    big = size == '14b'
    for res, r in (('480p', R480), ('720p', R720)):
        cfg = f'{arg},{res}'
        hi = res == '720p'
        # train: f32 master weights, AdamW, EMA, remat 'full', splash attention
        ROWS[f'{size}_{res}_train_v5e-8'] = (
            cfg,
            'train',
            r,
            'v5e-8',
            [(M(1, 2, 1, 4), 2)] if hi else [(M(1, 8, 1, 1), 8), (M(1, 4, 1, 2), 4)],
        )
        ROWS[f'{size}_{res}_train_v5p-8'] = (
            cfg,
            'train',
            r,
            'v5p-8',
            [(M(1, 4, 1, 1), 4), (M(1, 2, 1, 2), 2)],
            FS if big else [],
        )
        # 14B at 720p: (1, 32, 1, 1) with one clip per chip fits with 6% free (89.3 of 95 GiB)
        ROWS[f'{size}_{res}_train_v5p-64'] = (
            cfg,
            'train',
            r,
            'v5p-64',
            [(M(1, 16, 1, 2), 16)] if big and hi else [(M(1, 32, 1, 1), 32)],
        )
        ROWS[f'{size}_{res}_train_v6e-64'] = (
            cfg,
            'train',
            r,
            'v6e-64',
            [(M(1, 8, 1, 8), 8)]
            if big and hi
            else [(M(1, 16, 1, 4), 16)]
            if big
            else [(M(1, 32, 1, 2), 32)]
            if hi
            else [(M(1, 64, 1, 1), 64)],
            FS if big else [],
        )
        # sampling: one DiT forward on the CFG batch (2 rows), bf16 weights
        ROWS[f'{size}_{res}_sample_v5e-8'] = (
            cfg,
            'sample',
            r,
            'v5e-8',
            [(M(1, 1, 8, 1), 1)] if big else [(M(1, 1, 1, 8), 1)],
        )
        ROWS[f'{size}_{res}_sample_v5p-8'] = (cfg, 'sample', r, 'v5p-8', [(M(1, 1, 1, 4), 1)])
        ROWS[f'{size}_{res}_sample_v5p-64'] = (
            cfg,
            'sample',
            r,
            'v5p-64',
            [(M(2, 1, 1, 16), 1)] if hi else [(M(2, 1, 2, 8), 1)],
        )
        ROWS[f'{size}_{res}_sample_v6e-64'] = (
            cfg,
            'sample',
            r,
            'v6e-64',
            [(M(2, 1, 2, 16), 1)] if hi else [(M(2, 1, 4, 8), 1)],
        )
ROWS['14b_720p_sample_v5p-8_xla'] = (
    't2v_14b,720p',
    'sample',
    R720,
    'v5p-8',
    [(M(1, 1, 1, 4), 1)],
    ['--config.model.attention=xla'],
)
ROWS['14b_720p_train_v5p-64_chunked'] = (
    't2v_14b,720p',
    'train',
    R720,
    'v5p-64',
    [(M(1, 16, 1, 2), 16)],
    ['--config.model.attention=chunked'],
)
# The VAE's chunked decode of one clip (what sampling runs once after the DiT steps): the
# weights are replicated and one clip is not split, so every chip decodes the whole clip.
for res, r in (('480p', R480), ('720p', R720)):
    for topo in ('v5e-8', 'v5p-8'):
        mesh = M(1, 1, 1, 8) if topo == 'v5e-8' else M(1, 1, 1, 4)
        ROWS[f'vae_{res}_decode_{topo}'] = (f't2v_14b,{res}', 'decode', r, topo, [(mesh, 1)])
# Wan 2.2 TI2V-5B at its own size: 704x1280 (the VAE's 16x times the 2x2 patch divides 704, not
# 720), 121 frames. Training is the flow objective of the other rows (one timestep per clip).
R704 = (121, 704, 1280)
ROWS['ti2v5b_704p_train_v5p-8'] = (
    'wan22.py:ti2v_5b',
    'train',
    R704,
    'v5p-8',
    [(M(1, 4, 1, 1), 4), (M(1, 2, 1, 2), 2), (M(1, 1, 1, 4), 1)],
    FS,
)
ROWS['ti2v5b_704p_sample_v5p-8'] = (
    'wan22.py:ti2v_5b',
    'sample',
    R704,
    'v5p-8',
    [(M(1, 1, 1, 4), 1)],
)
ROWS['ti2v5b_704p_decode_v5p-8'] = (
    'wan22.py:ti2v_5b',
    'decode',
    R704,
    'v5p-8',
    [(M(1, 1, 1, 4), 1)],
)
# configs/wan21.py's slice recipes: bf16 first moment, no EMA, params over fsdp x sequence
ROWS['14b_720p_train_v5p-8_recipe'] = (
    't2v_14b,720p,v5p8',
    'train',
    R720,
    'v5p-8',
    [(M(1, 1, 1, 4), 1)],
)
ROWS['14b_720p_train_v5p-8_recipe_ema_host'] = (  # the EMA kept in pinned host memory
    't2v_14b,720p,v5p8',
    'train',
    R720,
    'v5p-8',
    [(M(1, 1, 1, 4), 1)],
    ['--config.train.ema=host'],
)
# The memory options of the train state and activations (docs/tpu_memory.md), each alone
MEMORY_OPTIONS = (
    ('mu_bf16', ['--config.train.mu_dtype=bfloat16']),
    ('ema_off', ['--config.train.ema=off']),
    ('ema_host', ['--config.train.ema=host']),
    ('opt_host', ['--config.train.optimizer_memory=host']),
    ('remat_offload', ['--config.train.remat=offload']),
)
# Each option alone (configs/wan21.py:t2v_14b,720p's default state otherwise), on the recipe's
# layout: what each buys at 720x1280x81 on v5p-8
for opt, flag in (('default', []), *MEMORY_OPTIONS):
    ROWS[f'14b_720p_train_v5p-8_seq4_{opt}'] = (
        't2v_14b,720p',
        'train',
        R720,
        'v5p-8',
        [(M(1, 1, 1, 4), 1)],
        FS + flag,
    )
ROWS['1.3b_720p_train_v5e-8_recipe'] = (
    't2v_1.3b,720p,v5e8',
    'train',
    R720,
    'v5e-8',
    [(M(1, 2, 1, 4), 2)],
)
# The same options on a v5e-8, for the model that trains there (14B's 16-byte state is 26.6 GiB
# a chip over 8 chips, above v5e's 14.9 GiB): 1.3B at 720x1280x81, the recipe's layout and batch
for opt, flag in MEMORY_OPTIONS:
    ROWS[f'1.3b_720p_train_v5e-8_recipe_{opt}'] = (
        't2v_1.3b,720p,v5e8',
        'train',
        R720,
        'v5e-8',
        [(M(1, 2, 1, 4), 2)],
        flag,
    )
PRIORITY = [
    '14b_720p_train_v5p-64',
    '14b_480p_train_v5p-64',
    '1.3b_480p_train_v5p-8',
    '14b_720p_sample_v5p-8',
    '14b_720p_sample_v5p-8_xla',
    '1.3b_480p_sample_v5e-8',
    '1.3b_480p_train_v5e-8',
    '14b_720p_train_v6e-64',
    '14b_480p_train_v6e-64',
    '14b_480p_train_v5p-8',
    '14b_480p_train_v5e-8',
    '14b_720p_train_v5e-8',
]


MIN_HEADROOM = 0.10  # a layout must leave this much HBM free to count as fitting with room


def run_row(name, out, force):
    """Tries the row's layouts in order (each report cached as <row>__<k>.json) and keeps as
    <row>.json the first that leaves MIN_HEADROOM free, else the one with the most room (or, when
    none fits, the one that needs the least)."""
    cfg, task, (nf, h, w), topo, meshes, *extra = ROWS[name]
    extra = extra[0] if extra else []
    path = os.path.join(out, f'{name}.json')
    if os.path.exists(path) and not force:
        return
    reps = []
    for k, (mesh, batch) in enumerate(meshes):
        tmp = os.path.join(out, f'{name}__{k}.json')
        cmd = [
            sys.executable,
            os.path.relpath(AOT_SCRIPT),
            f'--config=configs/{cfg if ".py:" in cfg else "wan21.py:" + cfg}',
            f'--topology={topo}',
            f'--task={task}',
            f'--num_frames={nf}',
            f'--height={h}',
            f'--width={w}',
            f'--batch_size={batch}',
            f'--config.mesh.shape={mesh}',
            f'--json={tmp}',
            *extra,
        ]
        if force or not os.path.exists(tmp):
            print(' '.join(cmd[1:]), flush=True)
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode or not os.path.exists(tmp):
                with open(tmp, 'w') as f:
                    json.dump(
                        dict(
                            error=(r.stderr or r.stdout).strip().splitlines()[-1][:500],
                            command=' '.join(cmd[1:]),
                            fits=False,
                        ),
                        f,
                        indent=1,
                    )
        rep = json.load(open(tmp))
        reps.append(rep)
        if rep.get('fits') and rep.get('headroom', 0) >= MIN_HEADROOM:
            break
    fitting = [r for r in reps if r.get('fits')]
    need = lambda r: r.get('memory_bytes', {}).get(
        'total', r.get('memory_bytes', {}).get('needed', float('inf'))
    )
    best = max(fitting, key=lambda r: r.get('headroom', 0)) if fitting else min(reps, key=need)
    with open(path, 'w') as f:
        json.dump(best, f, indent=1)
    print(f'  -> {name}: fits={best.get("fits")} headroom={best.get("headroom")}', flush=True)


def _terms(roof: dict) -> str:
    """The roofline's terms (aot/report.py); rows compiled before the HBM term show '-' for it."""
    if not roof:
        return '-'
    hbm = f'{roof["hbm_s"]:.2f}' if 'hbm_s' in roof else '-'
    return f'{roof["compute_s"]:.2f} / {hbm} / {roof["ici_s"]:.2f}'


def table(out):
    """Writes <out>/table.md from the rows' JSON reports (and prints it)."""
    rows = []
    G = 2**30
    for path in sorted(glob.glob(os.path.join(out, '*.json'))):
        if '__' in os.path.basename(path):
            continue
        r = json.load(open(path))
        name = os.path.basename(path)[:-5]
        mem = r.get('memory_bytes', {})
        total = mem.get('total', mem.get('needed'))
        coll = r.get('collectives', {})
        cb = sum(v['bytes'] for v in coll.values()) / G if coll else None
        roof = r.get('roofline', {})
        mesh = r.get('mesh', {})
        mesh_s = (
            '(' + ','.join(str(mesh[a]) for a in ('data', 'fsdp', 'tensor', 'sequence')) + ')'
            if mesh
            else '-'
        )
        rows.append(
            '| '
            + ' | '.join(
                [
                    name,
                    r.get('topology', '-'),
                    mesh_s,
                    str(r.get('batch_size', '-')),
                    str(r.get('attention', '-')),
                    str(r.get('remat', '-')),
                    f'{total / G:.1f} / {r["hbm_bytes"] / G:.0f}'
                    if total and 'hbm_bytes' in r
                    else '-',
                    ('yes' if r.get('fits') else 'no'),
                    f'{cb:.1f}' if cb is not None else '-',
                    f'{roof["step_s"]:.2f}' if roof else '-',
                    _terms(roof),
                    f'{100 * roof["mfu"]:.0f}%' if roof else '-',
                ]
            )
            + ' |'
        )
    head = (
        '| row | slice | mesh (d,f,t,s) | batch | attention | remat | GiB per chip (total / HBM) '
        '| fits | collective GiB per step | roofline s/step (estimate) | compute / HBM / ICI s '
        '| MFU at the estimate |\n'
        '|---|---|---|---|---|---|---|---|---|---|---|---|\n'
    )
    with open(os.path.join(out, 'table.md'), 'w') as f:
        f.write(head + '\n'.join(rows) + '\n')
    print(head + '\n'.join(rows))


# Sora's headline size: 10 s at 1080p. Wan 14B, one guided DiT forward at 161 frames (10 s at
# Wan's 16 fps) x 1088 x 1920 (1080 is not a multiple of the VAE's 8x times the 2x2 patch; 1088
# is): a 41 x 136 x 240 latent, 334,560 tokens a clip. Tokens split over the sequence axis.
R1080 = (161, 1088, 1920)
ROWS['14b_1080p_10s_sample_v5p-64'] = (
    't2v_14b,720p',
    'sample',
    R1080,
    'v5p-64',
    [(M(2, 1, 1, 16), 1), (M(1, 1, 1, 32), 1)],
)
ROWS['14b_1080p_10s_sample_v6e-64'] = (
    't2v_14b,720p',
    'sample',
    R1080,
    'v6e-64',
    [(M(2, 1, 2, 16), 1), (M(2, 1, 4, 8), 1)],
)
ROWS['14b_1080p_10s_sample_v6e-256'] = (
    't2v_14b,720p',
    'sample',
    R1080,
    'v6e-256',
    [(M(2, 1, 4, 32), 1)],
)
# The chunked, cached sampler (`--task=rollout`: `pipeline/rollout.chunk_step`, one program for
# every chunk): a causal Wan DiT with 3 latent frames a chunk (CausVid / Self-Forcing), a cache
# of 4 past chunks (the sampler's default; `_window8`: 8), over a 60 s video (961 frames at 16
# fps: 81 chunks). Tokens and cache slots split over the sequence axis, as the sample rows.
R60S_480, R60S_720 = (961, 480, 832), (961, 720, 1280)
CAUSAL = ['--config.model.causal_chunk=3']
# First the sample rows' layout (weights replicated, tokens and cache slots over sequence), then
# heads over tensor: splash reads every key of a layer on each chip, and XLA gathers the cache's
# slots whole, so only a tensor split divides the gathered cache. 14B on v5e-8: tensor 8, as its
# sample rows (28 GB of bf16 weights fit no v5e chip).
for size, arg, topo, meshes in (
    ('1.3b', 't2v_1.3b', 'v5e-8', [M(1, 1, 1, 8), M(1, 1, 4, 2)]),
    ('14b', 't2v_14b', 'v5p-8', [M(1, 1, 1, 4), M(1, 1, 4, 1)]),
    ('14b', 't2v_14b', 'v5e-8', [M(1, 1, 8, 1)]),
):
    for res, r in (('480p', R60S_480), ('720p', R60S_720)):
        ROWS[f'{size}_{res}_rollout_{topo}'] = (
            f'{arg},{res}',
            'rollout',
            r,
            topo,
            [(m, 1) for m in meshes],
            CAUSAL,
        )
ROWS['1.3b_480p_rollout_v5e-8_window8'] = (
    't2v_1.3b,480p',
    'rollout',
    R60S_480,
    'v5e-8',
    [(M(1, 1, 1, 8), 1)],
    CAUSAL + ['--rollout_window=8'],
)
ROWS['14b_720p_rollout_v5e-8_window2'] = (  # window 4 does not fit a v5e chip at 720p
    't2v_14b,720p',
    'rollout',
    R60S_720,
    'v5e-8',
    [(M(1, 1, 8, 1), 1)],
    CAUSAL + ['--rollout_window=2'],
)
ROWS['14b_720p_rollout_v5e-8_window1'] = (  # window 2 needs 14.95 of 14.9 GiB a chip
    't2v_14b,720p',
    'rollout',
    R60S_720,
    'v5e-8',
    [(M(1, 1, 8, 1), 1)],
    CAUSAL + ['--rollout_window=1'],
)
