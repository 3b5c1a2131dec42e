"""Precision and recall of the prompt moderation on the labelled prompt set.

  python experiments/moderation_eval.py --json=outputs/moderation.json
  python experiments/moderation_eval.py --policy=my_policy.json --show_misses   # tune split only

Prints precision and recall per split (tune / heldout), language and category
(sora_jax/safety/moderation_eval.py says how they are counted), the time per prompt, and
writes the same figures as JSON. Misses are shown for the tune split only: the held-out split
is for measuring, not for tuning.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string('set', None, 'Labelled JSONL (default tests/safety/prompts/labelled.jsonl).')
flags.DEFINE_string('policy', None, 'Content policy JSON (default: the shipped policy).')
flags.DEFINE_string('json', None, 'Write the figures here as JSON.')
flags.DEFINE_bool('show_misses', False, 'Print the tune split prompts the policy gets wrong.')


def main(argv):
    del argv
    F = flags.FLAGS
    from sora_jax.safety import moderation, moderation_eval

    rows = moderation_eval.load_set(F.set)
    mod = moderation.Moderator.load(F.policy)
    mod.check('warm up')
    t0 = time.perf_counter()
    report = moderation_eval.evaluate(mod.check, rows)
    ms = (time.perf_counter() - t0) * 1e3 / len(rows)
    report.update(policy=mod.source, set=F.set or moderation_eval.DEFAULT_SET, ms_per_prompt=ms)
    print(moderation_eval.format_table(report))
    print(f'{len(rows)} prompts, {ms:.3f} ms per prompt (policy {mod.source})')
    if F.show_misses:
        for m in report['misses']:
            print(
                f'MISS {m["label"]:7} {m["category"]:16} got={m["got"]} ({m["match"]}) {m["text"]}'
            )
    if F.json:
        os.makedirs(os.path.dirname(os.path.abspath(F.json)), exist_ok=True)
        with open(F.json, 'w') as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        print(f'wrote {F.json}')


if __name__ == '__main__':
    app.run(main)
