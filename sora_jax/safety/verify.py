"""Verify a file: its Content Credentials (C2PA) and its invisible watermark, in one report.

`verify(path)` -> dict with 'c2pa' (provenance.read), 'watermark' (the detector's reading),
'tampered', 'watermark_mismatch' (a valid manifest claiming a payload the detector does not
find) and 'status', one of `EXIT`'s keys; `describe(report)` is its text form. The CLI is
experiments/verify.py; its exit status is `EXIT[status]` (docs/guarantees.md).
"""

import os

from sora_jax import cli


def verify(path: str) -> dict:
    from sora_jax.safety import provenance, watermark

    if not os.path.isfile(path):
        raise cli.UnreadableError(f'{path!r} does not exist; pass a video or image file.')
    c2pa_report = provenance.read(path)
    try:
        det = watermark.detect_file(path)
        wm = {
            'found': det.found,
            'model_id': det.model_id,
            'user_key': det.user_key,
            'confidence': round(det.confidence, 3),
            'score': round(det.score, 3),
            'corrected_bits': det.corrected,
            'summary': det.summary(),
        }
    except ValueError as e:
        wm = {'found': False, 'error': str(e)}
    claimed = (c2pa_report.get('generation') or {}).get('watermark')
    mismatch = bool(
        c2pa_report['valid']
        and claimed
        and (
            not wm.get('found')
            or (claimed.get('model_id'), claimed.get('user_key'))
            != (wm.get('model_id'), wm.get('user_key'))
        )
    )
    tampered = c2pa_report['present'] and not c2pa_report['valid']
    if tampered:
        status = 'invalid'
    elif c2pa_report['valid']:
        status = 'watermark_mismatch' if mismatch else 'valid'
    else:
        status = 'no_manifest_watermark' if wm.get('found') else 'no_manifest'
    return {
        'file': path,
        'c2pa': c2pa_report,
        'watermark': wm,
        'tampered': tampered,
        'watermark_mismatch': mismatch,
        'status': status,
    }


EXIT = {
    'valid': 0,
    'no_manifest_watermark': 1,
    'invalid': 2,
    'no_manifest': 3,
    'watermark_mismatch': 4,
}


def describe(r: dict) -> str:
    c, w = r['c2pa'], r['watermark']
    lines = [f'file: {r["file"]}']
    if not c['present']:
        lines.append('C2PA: no manifest' + (f' ({c["errors"][0]})' if c['errors'] else ''))
    else:
        lines.append(
            f'C2PA: {"VALID" if c["valid"] else "INVALID (tampered or broken)"} '
            f'(state {c["state"]}, {"trusted" if c["trusted"] else "signer not in a trust list"})'
        )
        lines += [f'  error: {e}' for e in c['errors']]
        s = c['signer'] or {}
        lines.append(f'  signer: {s.get("common_name")} / issuer {s.get("issuer")}')
        lines.append(f'  generator: {c["generator"]}; actions: {c["actions"]}')
        g = c['generation'] or {}
        lines.append(
            f'  model: checkpoint sha256 {g.get("checkpoint_sha256")}, config {g.get("config")}'
        )
        for lora in g.get('loras') or []:
            lines.append(f'  LoRA: {lora["file"]} sha256 {lora["sha256"]} scale {lora["scale"]}')
        if g.get('autoencoder'):
            lines.append(f'  VAE (outside the checkpoint, hashed with it): {g["autoencoder"]}')
        lines.append(f'  training-data record sha256: {g.get("data_record_sha256")}')
        lines.append(
            f'  safeguards disabled: {g.get("safeguards_disabled") or "none"}; '
            f'watermark payload claimed: {g.get("watermark")}'
        )
    lines.append('watermark: ' + w.get('summary', w.get('error', '')))
    if r['watermark_mismatch']:
        lines.append(
            '  WARNING: the manifest claims a watermark the detector '
            + ('finds with another payload' if w.get('found') else 'does not find')
        )
    elif c['valid'] and w.get('found') and (c['generation'] or {}).get('watermark'):
        lines.append("  watermark payload matches the manifest's")
    return '\n'.join(lines)
