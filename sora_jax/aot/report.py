"""What one AOT compile says about a step: memory against HBM, flops, collectives, a roofline.

Figures are per device (one TPU chip). Flops:
  xla_flops        XLA's cost analysis. It counts the body of every loop once (the scan over
                   blocks, XLA's windowed einsums) and sees nothing inside Pallas kernels
                   (splash attention), so it is far below what runs; reported for reference.
  model_flops      6 N tokens (train) or 2 N tokens (one forward), N = the DiT's matmul weights
  attention_flops  scores and values, self and cross, x3 when training
  executed_flops   model + attention, plus one more forward when remat recomputes it
                   (all three from `models/flops.dit_flops`, the count training logs and
                   benchmarks use)
  hlo_flops        the optimized HLO's convolutions and dots with loop trip counts
                   (`hlo.matmul_flops`; no Pallas kernel): the decode task's flops, a VAE being
                   all convolutions, and a cross-check of the analytic count for the others
The roofline time is the largest of its terms, each a time the step cannot beat:
  compute_s  executed_flops / peak bf16 (decode: hlo_flops / peak bf16)
  hbm_s      HBM bytes / HBM bandwidth: bytes every instruction reads and writes, counted with
             loop trip counts (`hlo.hbm_traffic`), the splash kernels' share replaced by
             `splash_hbm_bytes` (their K/V and Q/dO blocks are re-read once per tile)
  ici_s      collective traffic / ICI bandwidth (`hlo.collectives`)
  host_s     bytes copied to and from pinned host memory (EMA / optimizer state / remat
             'offload') / the host link, when the chip table has a host-link figure
An estimate and a lower bound: the terms are taken to overlap perfectly and every unit to run
at its peak. MFU at the estimate = (model + attention flops) / (roofline time x peak): below the
remat ratio (6N / 8N) only when a term other than compute binds.
"""

from __future__ import annotations

import math
import re

from sora_jax.aot import hlo
from sora_jax.aot.topology import Slice
from sora_jax.models import flops

GiB = 1024**3


def splash_hbm_bytes(
    model: dict,
    tokens: int,
    batch: int,
    text_length: int,
    *,
    train: bool,
    block: int = 0,
    kv_tokens: int | None = None,
) -> float:
    """HBM bytes of the splash attention kernels of one step over `batch` clips (all devices;
    bf16 q, k, v), counted as their tiles run (`models/attention_kernels._splash_local`): the
    forward reads q once and k, v once per q tile, writes o; the backward's dq kernel reads
    k, v once per q tile, the dkv kernel q and do once per k tile. Self-attention over the
    `tokens` video tokens and cross-attention over `text_length` text tokens, in every block;
    training runs the forward twice with remat (recompute) and the backward once. `kv_tokens`:
    self-attention keys when they are more than the queries (a chunked rollout's cache + chunk)."""
    from sora_jax.models import attention_kernels

    heads, depth = int(model['num_heads']), int(model['depth'])
    d = int(model['dim']) // heads
    b = 2  # bf16

    def one(nq, nk):  # [forward, backward] bytes of one head of one layer of one clip
        tq = math.ceil(nq / (block or attention_kernels.splash_block(nq)))
        tk = math.ceil(nk / (block or attention_kernels.splash_block(nk)))
        fwd = b * d * (2 * nq + 2 * nk * tq)
        dq = b * d * (3 * nq + 2 * nk * tq)  # q, do read, dq written; k, v per q tile
        dkv = b * d * (2 * nq * tk + 4 * nk)  # q, do per k tile; k, v read, dk, dv written
        return fwd, dq + dkv

    total = 0.0
    for nk in (kv_tokens or tokens, text_length):
        if not nk:
            continue
        fwd, bwd = one(tokens, nk)
        remat = train and model.get('remat', 'none') != 'none'
        total += (fwd * (2 if remat else 1) + bwd) if train else fwd
    return total * heads * depth * batch


def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    out = dict(
        argument=m.argument_size_in_bytes,
        output=m.output_size_in_bytes,
        temp=m.temp_size_in_bytes,
        alias=m.alias_size_in_bytes,
        code=m.generated_code_size_in_bytes,
    )
    out['total'] = out['argument'] + out['output'] - out['alias'] + out['temp'] + out['code']
    # pinned host memory (train.ema / train.optimizer_memory 'host', remat 'offload'): not HBM
    host = dict(
        argument=getattr(m, 'host_argument_size_in_bytes', 0),
        output=getattr(m, 'host_output_size_in_bytes', 0),
        alias=getattr(m, 'host_alias_size_in_bytes', 0),
        temp=getattr(m, 'host_temp_size_in_bytes', 0),
    )
    out['host'] = host['argument'] + host['output'] - host['alias'] + host['temp']
    out['host_temp'] = host['temp']
    return out


def oom_from_error(message: str) -> dict | None:
    """{'needed', 'available'} (bytes) from XLA's RESOURCE_EXHAUSTED message, else None."""
    if 'RESOURCE_EXHAUSTED' not in message and 'exceeds' not in message:
        return None
    m = re.search(
        r'\(([\d.]+)([GMK])\) exceeds available HBM \(([\d.]+)([GMK])\)', message
    ) or re.search(r'Used ([\d.]+)([GMK]) of ([\d.]+)([GMK]) hbm', message)
    if not m:
        return None
    unit = {'G': GiB, 'M': 1024**2, 'K': 1024}
    out = dict(
        needed=float(m.group(1)) * unit[m.group(2)], available=float(m.group(3)) * unit[m.group(4)]
    )
    if 'train state (' in message:  # arguments alone (compile.ArgumentsExceedHBM)
        out['argument'] = out['needed']
    else:
        out['temp'] = out['needed']
    return out


def advice(
    task: str,
    fits: bool,
    mem: dict,
    hbm: float,
    model: dict,
    mesh_shape: dict,
    attention: str | None,
    per_device_clips: float,
) -> list[str]:
    """What would make a step fit (or leave more room), from where the bytes go."""
    out = []
    if fits and mem.get('total', 0) < 0.8 * hbm:
        return out
    args, temp = mem.get('argument', 0), mem.get('temp', 0)
    n_dev = math.prod(mesh_shape.values())
    if task == 'train' and args > 0.4 * hbm:
        if mesh_shape.get('fsdp', 1) < n_dev:
            out.append(
                f'more fsdp: shard parameters and optimizer state over all {n_dev} chips '
                f"(--config.mesh.shape='(1,{n_dev},1,1)' or sequence on the rest)"
            )
        else:
            out.append(
                'a larger slice: parameters, optimizer state and EMA alone take '
                f'{args / GiB:.1f} GiB per chip'
            )
    if attention in ('xla',):
        out.append('--config.model.attention=splash (xla materialises the attention scores)')
    if attention == 'chunked' and task == 'train':
        out.append(
            "--config.model.attention=splash (the chunked kernel's gradient keeps its "
            'per-block scores)'
        )
    if task == 'train' and model.get('remat', 'none') == 'none':
        out.append('--config.train.remat=full (recompute each block in the backward pass)')
    if task == 'rollout' and temp > 0.4 * hbm:  # the key/value cache dominates
        if mesh_shape.get('sequence', 1) > 1:
            out.append(
                "heads over the 'tensor' axis (e.g. --config.mesh.shape='(1,1,4,"
                f"{max(1, n_dev // 4)})', a count that divides the heads): splash reads every "
                "cached key of a layer on each chip, so slots split over 'sequence' are "
                'all-gathered'
            )
        out.append(
            'a smaller cache: --rollout_window (past chunks each chunk attends to), or a '
            'slice with more chips on the tensor axis'
        )
    elif temp > 0.4 * hbm:
        if per_device_clips > 1:
            out.append('a smaller batch per chip (--batch_size, or more data/fsdp chips)')
        out.append(
            "sequence parallelism: put chips on the 'sequence' axis (e.g. "
            f"--config.mesh.shape='(1,{max(1, n_dev // 2)},1,2)') so each holds part of "
            'every clip'
        )
    return out


def build(
    sl: Slice,
    compiled,
    info: dict,
    *,
    batch_size: int,
    text_length: int,
    mesh_shape: dict,
    compile_s: float,
) -> dict:
    """The report dict (JSON-ready) of one successful compile."""
    chip = sl.spec
    n_dev = sl.chips
    mem = memory(compiled)
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    hlo_text = compiled.as_text()
    coll = hlo.collectives(hlo_text, n_dev)
    traffic = sum(v['traffic'] for v in coll.values())
    rep = dict(
        topology=sl.topology,
        chip=sl.chip,
        chips=n_dev,
        mesh=mesh_shape,
        task=info['task'],
        attention=info['attention'],
        params=info['params'],
        tokens_per_clip=info['tokens_per_clip'],
        latent=list(info['latent']),
        batch_size=batch_size,
        compile_s=round(compile_s, 1),
        memory_bytes=mem,
        hbm_bytes=chip.hbm_bytes,
        fits=bool(mem['total'] <= chip.hbm_bytes),
        headroom=round(1 - mem['total'] / chip.hbm_bytes, 3),
        xla_flops=float(ca.get('flops', 0.0)),
        xla_bytes_accessed=float(ca.get('bytes accessed', 0.0)),
        hlo_flops=hlo.matmul_flops(hlo_text),
        collectives=coll,
        kernels=hlo.custom_kernels(hlo_text),
        hbm=_hbm(hlo_text),
        chip_figures=dict(
            bf16_flops=chip.bf16_flops, hbm_bw=chip.hbm_bw, ici_bw=chip.ici_bw, source=chip.source
        ),
    )
    if 'inputs' in info:  # the sample task's model inputs: {name: shape}
        rep['inputs'] = {k: list(v) for k, v in info['inputs'].items()}
    if 'rollout' in info:
        rep['rollout'] = dict(info['rollout'])
    if info['task'] in ('train', 'sample', 'decode', 'rollout'):
        clips = batch_size * (2 if info['task'] in ('sample', 'rollout') else 1)
        train = info['task'] == 'train'
        ro = info.get('rollout')
        if ro:  # one chunk: `evaluations` DiT calls of chunk_tokens queries, keys + the cache
            fl = flops.dit_flops(
                info['model'], info['tokens_per_clip'], clips, text_length, train=False
            )
            d, depth = int(info['model']['dim']), int(info['model']['depth'])
            cache_attn = 4.0 * clips * depth * d * info['tokens_per_clip'] * ro['cache_tokens']
            e = ro['evaluations']
            per_dev = {
                'model_flops': e * fl.model / n_dev,
                'attention_flops': e * (fl.attention + cache_attn) / n_dev,
                'executed_flops': e * (fl.executed + cache_attn) / n_dev,
            }
        elif info['task'] == 'decode':  # a conv net: every FLOP is an HLO convolution or dot
            per_dev = dict.fromkeys(('model_flops', 'executed_flops'), rep['hlo_flops'])
            per_dev['attention_flops'] = 0.0
        else:
            fl = flops.dit_flops(
                info['model'], info['tokens_per_clip'], clips, text_length, train=train
            )
            per_dev = {
                'model_flops': fl.model / n_dev,
                'attention_flops': fl.attention / n_dev,
                'executed_flops': fl.executed / n_dev,
            }
        t_compute = per_dev['executed_flops'] / chip.bf16_flops
        t_ici = traffic / chip.ici_bw
        hbm = rep['hbm']
        if info['attention'] == 'splash':
            hbm['attention_bytes'] = (
                splash_hbm_bytes(
                    info['model'],
                    info['tokens_per_clip'],
                    clips,
                    text_length,
                    train=train,
                    kv_tokens=ro and info['tokens_per_clip'] + ro['cache_tokens'],
                )
                * (ro['evaluations'] if ro else 1)
                / n_dev
            )
            hbm['bytes'] = hbm['bytes'] - hbm['kernel_bytes'] + hbm['attention_bytes']
        t_hbm = hbm['bytes'] / chip.hbm_bw
        host_bw = getattr(chip, 'host_bw', None)
        t_host = hbm['host_bytes'] / host_bw if host_bw and hbm['host_bytes'] else 0.0
        terms = dict(compute=t_compute, hbm=t_hbm, ici=t_ici, host=t_host)
        t = max(terms.values())
        rep.update({f'{k}_per_device': v for k, v in per_dev.items()})
        rep['roofline'] = dict(
            compute_s=t_compute,
            hbm_s=t_hbm,
            ici_s=t_ici,
            host_s=t_host,
            step_s=t,
            bound=max(terms, key=terms.get),
            mfu=(per_dev['model_flops'] + per_dev['attention_flops']) / (t * chip.bf16_flops)
            if t
            else 0.0,
            estimate=True,
        )
    per_device_clips = (
        batch_size
        * (2 if info['task'] in ('sample', 'rollout') else 1)
        / max(1, mesh_shape.get('data', 1) * mesh_shape.get('fsdp', 1))
    )
    rep['advice'] = advice(
        info['task'],
        rep['fits'],
        mem,
        chip.hbm_bytes,
        info['model'],
        mesh_shape,
        info['attention'],
        per_device_clips,
    )
    return rep


def _hbm(hlo_text: str) -> dict:
    """HBM and host-link bytes per device per step from the optimized HLO (`hlo.hbm_traffic`);
    `bytes` is what the roofline divides by the HBM bandwidth."""
    t = hlo.hbm_traffic(hlo_text)
    return dict(
        bytes=t.total,
        hlo_bytes=t.total,
        kernel_bytes=t.kernel,
        host_bytes=t.host,
        host_copies=t.host_copies,
        by_op={k: v for k, v in list(t.by_op.items())[:8]},
    )


def failed(
    sl: Slice,
    task: str,
    message: str,
    *,
    mesh_shape: dict,
    batch_size: int,
    model: dict,
    attention: str | None,
    compile_s: float,
) -> dict:
    """The report of a compile that XLA refused (out of memory, or another error)."""
    oom = oom_from_error(message)
    rep = dict(
        topology=sl.topology,
        chip=sl.chip,
        chips=sl.chips,
        mesh=mesh_shape,
        task=task,
        attention=attention,
        batch_size=batch_size,
        compile_s=round(compile_s, 1),
        hbm_bytes=sl.spec.hbm_bytes,
        fits=False,
        error=message.strip().splitlines()[0][:500],
    )
    if oom:
        rep['memory_bytes'] = oom
        per_device_clips = batch_size / max(
            1, mesh_shape.get('data', 1) * mesh_shape.get('fsdp', 1)
        )
        rep['advice'] = advice(
            task, False, oom, sl.spec.hbm_bytes, model, mesh_shape, attention, per_device_clips
        )
    return rep


def text(rep: dict) -> str:
    """A few readable lines of a report."""
    g = lambda b: f'{b / GiB:.2f} GiB'
    lines = [
        f'{rep["task"]} on {rep["topology"]} ({rep["chips"]} chips), mesh {rep["mesh"]}, '
        f'attention {rep.get("attention")}, batch {rep["batch_size"]}'
    ]
    mem = rep.get('memory_bytes', {})
    if 'rollout' in rep:
        ro = rep['rollout']
        lines.append(
            f'one chunk of {ro["chunk_frames"]} latent frames ({ro["chunk_tokens"]} tokens), '
            f'cache of {ro["window"]} chunks + {ro["sink_frames"]} sink frames '
            f'({ro["cache_tokens"]} tokens, {g(ro["cache_bytes_per_chip"])} a chip), '
            f'{ro["evaluations"]} DiT calls ({ro["sampler"]}, {ro["steps"]} steps, + the cache '
            f'write); the same program for each of the {ro["chunks"]} chunks of '
            f'{ro["video_frames"]} frames, or any other number'
        )
    if 'error' in rep:
        lines.append(f'DOES NOT FIT / FAILED: {rep["error"]}')
    if 'total' in mem:
        lines.append(
            f'per chip: arguments {g(mem["argument"])}, output {g(mem["output"])} '
            f'(aliased {g(mem["alias"])}), temporaries {g(mem["temp"])}, total '
            f'{g(mem["total"])} of {g(rep["hbm_bytes"])} HBM -> '
            f'{"fits" if rep["fits"] else "DOES NOT FIT"} '
            f'({100 * rep["headroom"]:.0f}% free)'
        )
    if 'roofline' in rep:
        r = rep['roofline']
        if rep['task'] == 'decode':
            lines.append(
                f'flops per chip: {rep["hlo_flops"]:.3g} (convolutions with loop trip counts; '
                f'XLA counts {rep["xla_flops"]:.3g})'
            )
        else:
            lines.append(
                f'flops per chip: executed {rep["executed_flops_per_device"]:.3g} (6N.tokens '
                f'{rep["model_flops_per_device"]:.3g}, attention '
                f'{rep["attention_flops_per_device"]:.3g}; XLA counts {rep["xla_flops"]:.3g})'
            )
        lines.append(
            f'roofline estimate: {r["step_s"]:.3f} s/step ({r["bound"]}-bound: compute '
            f'{r["compute_s"]:.3f} s, HBM {r.get("hbm_s", 0):.3f} s, ICI {r["ici_s"]:.3f} s'
            + (f', host link {r["host_s"]:.3f} s' if r.get('host_s') else '')
            + f'), MFU at the estimate {100 * r["mfu"]:.0f}%'
        )
        if 'hbm' in rep:
            h = rep['hbm']
            lines.append(
                f'HBM per chip per step: {h["bytes"] / GiB:.1f} GiB'
                + (
                    f' (splash kernels {h["attention_bytes"] / GiB:.1f} GiB, analytic)'
                    if 'attention_bytes' in h
                    else ''
                )
                + (
                    f'; host link {h["host_bytes"] / GiB:.2f} GiB in {h["host_copies"]:.0f} copies'
                    if h['host_bytes']
                    else ''
                )
            )
    if 'collectives' in rep:
        parts = [
            f'{k} {v["executed"]:.0f}x {v["bytes"] / GiB:.2f} GiB'
            for k, v in rep['collectives'].items()
            if v['ops']
        ]
        lines.append('collectives per step: ' + (', '.join(parts) or 'none'))
    for a in rep.get('advice', []):
        lines.append(f'to fit / for more room: {a}')
    return '\n'.join(lines)
