"""The labelled prompt set and the precision / recall arithmetic of moderation_eval."""

import collections
import json

import pytest

from sora_jax.safety import moderation_eval
from sora_jax.safety.moderation import Verdict


def test_set_is_large_balanced_and_hash_split():
    rows = moderation_eval.load_set()  # raises if any split is not the hash's
    assert len(rows) >= 300
    by = collections.Counter((r['lang'], r['label']) for r in rows)
    for lang in ('en', 'es'):
        assert by[(lang, 'harmful')] >= 100 and by[(lang, 'benign')] >= 80, by
    cats = {r['category'] for r in rows if r['label'] == 'harmful'}
    assert cats == {
        'sexual_minors',
        'graphic_violence',
        'self_harm',
        'hate',
        'real_person',
        'weapons',
    }
    kinds = {r['kind'] for r in rows}
    assert {'paraphrase', 'inflection', 'obfuscation', 'office_holder', 'negation'} <= kinds
    held = sum(r['split'] == 'heldout' for r in rows) / len(rows)
    assert 0.4 < held < 0.6
    assert len({r['text'] for r in rows}) == len(rows)


def test_counts_and_groups(tmp_path):
    rows = [
        {'text': t, 'lang': 'en', 'label': lab, 'category': 'hate', 'kind': 'k'}
        for t, lab in [('a', 'harmful'), ('b', 'harmful'), ('c', 'benign'), ('d', 'benign')]
    ]
    for r in rows:
        r['split'] = moderation_eval.split_of(r['text'])
    refused = {'a': 'hate', 'c': 'weapons'}  # a: TP, b: FN, c: FP, d: TN
    check = lambda t: Verdict(t not in refused, refused.get(t), t)  # noqa: E731
    report = moderation_eval.evaluate(check, rows)
    g = {(x['split'], x['lang'], x['category']): x for x in report['groups']}
    tot = collections.Counter()
    for x in report['groups']:
        if x['category'] == 'hate':
            tot.update({k: x[k] for k in ('tp', 'fp', 'fn', 'tn')})
    assert dict(tot) == {'tp': 1, 'fp': 1, 'fn': 1, 'tn': 1}
    both = [x for x in report['groups'] if x['lang'] == 'all']
    assert sum(x['n'] for x in both) == 4
    assert {m['text'] for m in report['misses']} == {
        r['text'] for r in rows if r['text'] in 'bc' and r['split'] == 'tune'
    }
    assert all(0 <= x['precision'] <= 1 for x in g.values())
    p = tmp_path / 'bad.jsonl'
    p.write_text(json.dumps({**rows[0], 'split': 'x'}) + '\n')
    with pytest.raises(ValueError, match='split_of'):
        moderation_eval.load_set(p)


def test_counts_precision_recall():
    c = moderation_eval.Counts(tp=19, fp=1, fn=1, tn=5)
    assert c.precision == pytest.approx(0.95) and c.recall == pytest.approx(0.95)
    assert moderation_eval.Counts().precision == 1.0
