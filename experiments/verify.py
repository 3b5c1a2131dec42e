"""Report a file's Content Credentials (C2PA) and invisible watermark.

  python experiments/verify.py outputs/demo.mp4 [--json=FILE]

C2PA: whether a manifest is present and valid (or the validation errors: a file altered after
signing fails its hash check), the signer (issuer, name; development credentials are valid but
never trusted), the generator, the checkpoint hash and config, the training-data record hash and
the safeguards turned off. Watermark: found or not, the payload (model id, user key) and the
detector's confidence; this also works on a re-encoded copy that lost its manifest. Exit status:
0 if a valid manifest or a watermark is found, 1 if neither, 2 if the manifest is tampered.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    """Command-line flags, defined only when run as a script (tests import this module beside
    other experiments/ scripts that define a --json of their own)."""
    flags.DEFINE_string('json', None, 'Also write the report as JSON here.')


def verify(path: str) -> dict:
    from sora_jax.safety import provenance, watermark

    if not os.path.isfile(path):
        raise ValueError(f'{path!r} does not exist; pass a video or image file.')
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
    return {
        'file': path,
        'c2pa': c2pa_report,
        'watermark': wm,
        'tampered': c2pa_report['present'] and not c2pa_report['valid'],
    }


def describe(r: dict) -> str:
    c, w = r['c2pa'], r['watermark']
    lines = [f'file: {r["file"]}']
    if not c['present']:
        lines.append('C2PA: no manifest')
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
        lines.append(f'  training-data record sha256: {g.get("data_record_sha256")}')
        lines.append(
            f'  safeguards disabled: {g.get("safeguards_disabled") or "none"}; '
            f'watermark payload claimed: {g.get("watermark")}'
        )
    lines.append('watermark: ' + w.get('summary', w.get('error', '')))
    if c['present'] and c['valid'] and w.get('found') and (c['generation'] or {}).get('watermark'):
        claimed = c['generation']['watermark']
        same = (claimed.get('model_id'), claimed.get('user_key')) == (w['model_id'], w['user_key'])
        lines.append(f"  watermark payload {'matches' if same else 'DIFFERS from'} the manifest's")
    return '\n'.join(lines)


def main(argv):
    if len(argv) != 2:
        raise app.UsageError('usage: verify.py FILE [--json=OUT]')
    r = verify(argv[1])
    print(describe(r))
    if FLAGS.json:
        with open(FLAGS.json, 'w') as f:
            json.dump(r, f, indent=1, default=str)
    sys.exit(
        2 if r['tampered'] else 0 if (r['c2pa']['valid'] or r['watermark'].get('found')) else 1
    )


if __name__ == '__main__':
    define_flags()
    app.run(main)
