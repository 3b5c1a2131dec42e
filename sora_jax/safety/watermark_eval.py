"""Measure the invisible watermark: PSNR, bit accuracy after each transform, false positives.

The library of experiments/watermark_eval.py (`full(...)` is its default run):

  python experiments/watermark_eval.py --clips=8 --fpr_clips=800 --checkpoint=checkpoints/shapes \
      --model_clips=4 --json=outputs/watermark_eval.json   # all of it (~30 min on 2 cores)
  python experiments/watermark_eval.py --clips=4 --fpr_clips=40 --json=/tmp/wm.json   # quick look
  python experiments/watermark_eval.py --sets=shapes:1,shapes:9,shapes:5,shapes:3,shapes:7,\
      natural:0,natural:300,natural:600,natural:900,natural:1200   # the combination alone, 80 clips
  python experiments/watermark_eval.py --fpr_only --fpr_clips=800   # the false-positive rate alone
  python experiments/watermark_eval.py --fpr_only --fpr_clips=400 --fpr_start=400   # its 2nd half
  python experiments/watermark_eval.py --timing_clips=3   # seconds per detection (docs/safety.md)

Two measurements side by side on 2 cores: give each OMP_NUM_THREADS=1 (with two BLAS threads
each, the false-positive halves took 8.6 s a clip where one alone takes about 2 s).

Marked clips: `--clips` shapes-generator clips (16 frames, 32x32, marked at 32x32 and written
4x nearest-upscaled to 128x128 as sample.py does; the shipped model's outputs have this form)
and `--clips` natural-looking clips (pans and zooms over a photograph PyWavelets ships, 128x128),
plus, with --checkpoint, `--model_clips` clips sampled from that model. Each is marked with a
random payload, written as sample.py writes (H.264 CRF 18 .mp4), read back, then put through
every transform of sora_jax/safety/robustness.py. Bit accuracy = the fraction of the 32 payload
bits decoded right (the decoded codeword when the mark is found, else the raw
decisions); `found` = a codeword was found. Text-to-image: `--images` single frames (shapes
generator, and with --checkpoint the model's mode='t2i' output, marked by the pipeline) written
as sample.py writes them (.png, upscaled) and read back with detect_file. False positives:
`--fpr_clips` unmarked clips (half shapes, half natural, through the same mp4 round trip) that
the detector calls marked, with the exact (Clopper-Pearson) 95% upper bound on the rate and the
detector's fit score on them beside the marked clips' (how far apart the two sit).

`--sets` measures only the combination (robustness.py), on 8 clips per set: `shapes:SEED` (the
shapes generator's scenes 0-7 of that seed, 32x32 written 128x128) or `natural:START` (natural
clips START..START+7), each marked with a key drawn from seed SEED + 17 / START + 17, so a set
reads the same on every run and two detector versions can be compared clip by clip.
"""

import time


def shapes_clips(n, seed=1):
    from sora_jax.data import shapes

    return [
        shapes.render(shapes.sample_scene(seed, i, num_frames=16, height=32, width=32))
        for i in range(n)
    ]


def upscale(v, k=4):
    return v.repeat(k, 1).repeat(k, 2)


def as_written(v):
    """The mp4 round trip sample.py's output goes through (H.264 CRF 18)."""
    from sora_jax.safety import robustness

    return robustness.reencode(v, 18)


def unmarked_sources(n_shapes, n_natural, first=0):
    """[(clip, scale)] of the unmarked sequence: shapes scenes first.. (seed 7, 32x32, written 4x
    upscaled) then natural clips 10000 + first.. (128x128)."""
    from sora_jax.safety import robustness

    return [(c, 4) for c in shapes_clips(first + n_shapes, seed=7)[first:]] + [
        (robustness.natural_clip(10_000 + first + i), 1) for i in range(n_natural)
    ]


def payload_accuracy(d, truth):
    """Fraction of the 32 payload bits right: of the codeword when the mark is found, else of the
    raw decisions."""
    import numpy as np

    from sora_jax.safety import watermark as wm

    bits = wm.payload_bits(d.model_id, d.user_key) if d.found else d.bits
    return float(np.mean(bits == truth))


def evaluate(sources, rng):
    import numpy as np

    from sora_jax.safety import robustness
    from sora_jax.safety import watermark as wm

    out = {}
    for name, (clips, scale) in sources.items():
        rows = {
            k: {'bit_accuracy': [], 'raw_bit_accuracy': [], 'found': [], 'score': []}
            for k in robustness.TRANSFORMS
        }
        psnrs = []
        for clip in clips:
            mid, key = (int(x) for x in rng.integers(0, 2**16, 2))
            marked = wm.embed(clip, mid, key)
            psnrs.append(wm.psnr(upscale(marked, scale), upscale(clip, scale)))
            written = as_written(upscale(marked, scale))
            truth = wm.payload_bits(mid, key)
            for t, f in robustness.TRANSFORMS.items():
                d = wm.detect(f(written))
                raw = float(np.mean(d.bits == truth))
                rows[t]['bit_accuracy'].append(payload_accuracy(d, truth))
                rows[t]['raw_bit_accuracy'].append(raw)
                rows[t]['found'].append(bool(d.found))
                rows[t]['score'].append(d.score)
        out[name] = {
            'clips': len(clips),
            'psnr_db_min': round(min(psnrs), 2),
            'psnr_db_mean': round(float(np.mean(psnrs)), 2),
            'transforms': {
                t: {
                    'bit_accuracy': round(float(np.mean(r['bit_accuracy'])), 4),
                    'bit_accuracy_min': round(float(np.min(r['bit_accuracy'])), 4),
                    'raw_bit_accuracy': round(float(np.mean(r['raw_bit_accuracy'])), 4),
                    'found_rate': round(float(np.mean(r['found'])), 4),
                    'score_mean': round(float(np.mean(r['score'])), 3),
                }
                for t, r in rows.items()
            },
        }
        print(f'{name}: PSNR min {out[name]["psnr_db_min"]} dB', flush=True)
        for t, r in out[name]['transforms'].items():
            print(
                f'  {t:20s} bit acc {r["bit_accuracy"]:.4f} (min {r["bit_accuracy_min"]:.3f}, raw '
                f'{r["raw_bit_accuracy"]:.4f})  found {r["found_rate"]:.3f}',
                flush=True,
            )
    return out


def upper_bound(hits, n, conf=0.95):
    """Exact (Clopper-Pearson) one-sided upper confidence bound on a rate seen hits / n times."""
    from scipy import stats

    return 1.0 if hits >= n else float(stats.beta.ppf(conf, hits + 1, n - hits))


def false_positives(n, start=0):
    """n unmarked clips: shapes scenes start/2.. (seed 7) and natural clips 10000 + start/2..
    (so --fpr_start=0 and --fpr_start=400 with --fpr_clips=400 split the 800 of one run)."""
    import numpy as np

    from sora_jax.safety import watermark as wm

    hits, scores = 0, []
    for i, (c, k) in enumerate(unmarked_sources(n // 2, n - n // 2, start // 2)):
        d = wm.detect(as_written(upscale(c, k)))
        hits += d.found
        scores.append(d.score)
        if (i + 1) % 50 == 0:
            print(f'  unmarked {i + 1}/{n}: {hits} false positives', flush=True)
    return {
        'clips': n,
        'start': start,
        'false_positives': int(hits),
        'rate': hits / n,
        'rate_upper_95': round(upper_bound(hits, n), 5),
        'score_median': round(float(np.median(scores)), 3),
        'score_p99': round(float(np.quantile(scores, 0.99)), 3),
        'score_max': round(float(np.max(scores)), 3),
    }


def images(n, pipe=None):
    """t2i: single marked frames written as .png (upscaled like sample.py) and read back."""
    import tempfile

    import numpy as np

    from sora_jax.io import video as video_io
    from sora_jax.safety import watermark as wm

    rng = np.random.default_rng(1)
    out = {}
    keys = [tuple(int(x) for x in rng.integers(0, 2**16, 2)) for _ in range(n)]
    sources = {
        'shapes_frame_32x32_png_128': [
            (c[:1], 4, *k) for c, k in zip(shapes_clips(n, seed=11), keys)
        ]
    }
    if pipe is not None:
        scale = int(pipe.config.sample.get('display_scale', 4))
        prompts = [
            'a green square standing still',
            'a red circle',
            'un triángulo azul',
            'a yellow star',
        ]
        sources['shapes_model_t2i_png'] = [
            (
                pipe(prompts[i % len(prompts)], mode='t2i', seed=100 + i, progress=False)[0],
                scale,
                pipe.model_id,
                pipe.user_key,
            )
            for i in range(n)
        ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, items in sources.items():
            found, accs = [], []
            for i, (frame, k, mid, key) in enumerate(items):
                if name.startswith('shapes_frame'):
                    frame = wm.embed(frame, mid, key)
                path = video_io.write_image(f'{tmp}/{name}_{i}.png', upscale(frame, k)[0])
                d = wm.detect_file(path)
                found.append(bool(d.found and (d.model_id, d.user_key) == (mid, key)))
                accs.append(float(np.mean(d.bits == wm.payload_bits(mid, key))))
            out[name] = {
                'images': len(items),
                'found': int(sum(found)),
                'raw_bit_accuracy': round(float(np.mean(accs)), 4),
            }
            print(
                f'{name}: found {sum(found)}/{len(items)}, raw bit accuracy {np.mean(accs):.4f}',
                flush=True,
            )
    return out


def combination_sets(names):
    """Bit accuracy after robustness.combination on 8-clip sets (module docstring)."""
    import numpy as np

    from sora_jax.safety import robustness
    from sora_jax.safety import watermark as wm

    out = {}
    for name in names:
        src, _, start = name.partition(':')
        if src not in ('shapes', 'natural') or not start.isdigit():
            raise ValueError(
                f'--sets entry {name!r} must be shapes:SEED or natural:START, e.g. '
                'shapes:1 or natural:300.'
            )
        start = int(start)
        rng = np.random.default_rng(start + 17)
        clips = (
            shapes_clips(8, seed=start)
            if src == 'shapes'
            else [robustness.natural_clip(start + i) for i in range(8)]
        )
        accs, found = [], []
        for clip in clips:
            mid, key = (int(x) for x in rng.integers(0, 2**16, 2))
            scale = 4 if src == 'shapes' else 1
            marked = as_written(upscale(wm.embed(clip, mid, key), scale))
            d = wm.detect(robustness.combination(marked))
            truth = wm.payload_bits(mid, key)
            accs.append(payload_accuracy(d, truth))
            found.append(bool(d.found))
        out[name] = {
            'bit_accuracy': round(float(np.mean(accs)), 4),
            'found': int(sum(found)),
            'per_clip': [round(a, 3) for a in accs],
        }
        print(
            f'{name:14s} bit acc {np.mean(accs):.3f}  found {sum(found)}/8  '
            f'{np.round(accs, 2).tolist()}',
            flush=True,
        )
    for src in ('shapes', 'natural'):
        rows = [a for n, r in out.items() if n.startswith(src) for a in r['per_clip']]
        if rows:
            out[f'{src}_mean'] = round(float(np.mean(rows)), 4)
            print(
                f'{src}: mean bit accuracy {np.mean(rows):.3f} over {len(rows)} clips', flush=True
            )
    return out


def detection_time(n):
    """Seconds wm.detect takes per clip: n shapes (seed 7) and n natural (10000..) clips as
    written by sample.py, unmarked, marked, and marked then put through the combination."""
    import numpy as np

    from sora_jax.safety import robustness
    from sora_jax.safety import watermark as wm

    sources = unmarked_sources(n, n)
    unmarked = [as_written(upscale(c, k)) for c, k in sources]
    marked = [as_written(upscale(wm.embed(c, 5, 7), k)) for c, k in sources]
    wm.detect(unmarked[0])  # caches, untimed
    out = {}
    for name, vids in (
        ('unmarked', unmarked),
        ('marked', marked),
        ('marked_combination', [robustness.combination(v) for v in marked]),
    ):
        secs, found = [], 0
        for v in vids:
            t0 = time.perf_counter()
            found += wm.detect(v).found
            secs.append(round(time.perf_counter() - t0, 3))
        out[name] = {
            'shape': list(vids[0].shape),
            'seconds': secs,
            'found': int(found),
            'median': round(float(np.median(secs)), 3),
        }
        print(
            f'{name:20s} {vids[0].shape}: {np.median(secs):.2f} s a clip (median; '
            f'{min(secs):.2f}-{max(secs):.2f}), found {found}/{len(vids)}',
            flush=True,
        )
    return out


def full(clips, fpr_clips, images_n, checkpoint=None, model_clips=4) -> dict:
    """The whole measurement: marked clips (shapes, natural, and `model_clips` sampled from
    `checkpoint`), t2i images, and the false-positive rate on `fpr_clips` unmarked clips (0: skip)."""
    import numpy as np

    from sora_jax.safety import robustness

    t0 = time.time()
    rng = np.random.default_rng(0)
    sources = {
        'shapes_32x32_written_128': (shapes_clips(clips), 4),
        'natural_128': ([robustness.natural_clip(i) for i in range(clips)], 1),
    }
    pipe = None
    if checkpoint:
        from sora_jax.pipeline import TextToVideo

        pipe = TextToVideo.from_checkpoint(checkpoint)
        prompts = [
            'a red circle moving to the right',
            'una estrella amarilla moviéndose hacia arriba',
            'a green square moving down',
            'a white triangle moving to the left',
        ]
        vids = [
            pipe(prompts[i % len(prompts)], seed=i, progress=False, watermark=False)[0]
            for i in range(model_clips)
        ]
        sources['shapes_model_written_128'] = (
            vids,
            int(pipe.config.sample.get('display_scale', 4)),
        )
    result = {
        'marked': evaluate(sources, rng),
        'images': images(images_n, pipe),
        'false_positive': false_positives(fpr_clips) if fpr_clips else None,
        'seconds': round(time.time() - t0, 1),
    }
    print(f'false positives: {result["false_positive"]}', flush=True)
    return result
