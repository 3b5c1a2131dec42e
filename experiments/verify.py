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
import sys

from absl import app, flags

from sora_jax import cli
from sora_jax.safety.verify import EXIT, describe, verify

FLAGS = flags.FLAGS
flags.DEFINE_string('json', None, 'Also write the report as JSON here.')


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
    cli.run(main)
