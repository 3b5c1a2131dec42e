"""Report a file's Content Credentials (C2PA) and invisible watermark.

  python experiments/verify.py outputs/demo.mp4 [--json=FILE]

C2PA: whether a manifest is present and valid (or the validation errors: a file altered after
signing fails its hash check), the signer (issuer, name; development credentials are valid but
never trusted), the generator, the checkpoint hash (covering LoRAs and the VAE), the LoRA files
and config, the training-data record hash and the safeguards turned off. Watermark: found or
not, the payload (model id, user key) and the detector's confidence; this also works on a
re-encoded copy that lost its manifest. A manifest that claims a watermark the detector does
not find (or finds with another payload) is flagged.

Exit status (docs/guarantees.md):
  0  manifest valid (and the watermark it claims is found)
  1  no manifest, but a watermark is found (a re-encoded or stripped copy)
  2  manifest INVALID: tampered or broken
  3  no manifest and no watermark
  4  manifest valid, but the watermark it claims is missing or carries another payload
  5  the file does not exist or cannot be read
"""

import json
import os
import sys

from absl import app, flags  # noqa: E402

from sora_jax import cli  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags, defined only when run as a script (tests import this module beside
    other experiments/ scripts that define a --json of their own)."""
    flags.DEFINE_string('json', None, 'Also write the report as JSON here.')


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


def main(argv):
    if len(argv) != 2:
        raise app.UsageError('usage: verify.py FILE [--json=OUT]')
    r = verify(argv[1])
    print(describe(r))
    if FLAGS.json:
        from sora_jax.io import outputs

        outputs.write_text(FLAGS.json, json.dumps(r, indent=1, default=str))
    sys.exit(EXIT[r['status']])


if __name__ == '__main__':
    define_flags()
    cli.run(main)
