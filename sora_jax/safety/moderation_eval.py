"""Precision and recall of a prompt checker on a labelled prompt set, per split, language and
category.

    rows = load_set()                                  # tests/safety/prompts/labelled.jsonl
    report = evaluate(Moderator.load().check, rows)    # {'groups': [...], 'misses': [...]}
    print(format_table(report))

The set's rows are {text, lang, label: harmful|benign, category, kind, split: tune|heldout}.
A benign row's `category` names the harmful category it resembles ('none' for plain prompts),
so a category's precision counts the refusals of its own look-alikes: for category C,
TP = harmful rows of C refused (under any category), FP = benign rows of C refused,
FN = harmful rows of C allowed. A language's (or the whole split's) figures sum over every row,
'none' included. `right_category` is the share of refused harmful rows refused under their own
category. The split is fixed by a hash of the text (`split_of`), so tuning a policy on 'tune'
leaves 'heldout' unseen; `evaluate` reports misses of the 'tune' split only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Callable

DEFAULT_SET = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    'tests',
    'safety',
    'prompts',
    'labelled.jsonl',
)
LABELS = ('harmful', 'benign')
SPLITS = ('tune', 'heldout')


def split_of(text: str) -> str:
    """'tune' or 'heldout', from the parity of the first 32 bits of sha256(text)."""
    h = int(hashlib.sha256(text.encode('utf-8')).hexdigest()[:8], 16)
    return 'heldout' if h % 2 else 'tune'


def load_set(path: str | os.PathLike | None = None) -> list[dict]:
    """The labelled rows; a ValueError names a malformed row or a split that is not the hash's."""
    path = os.fspath(path or DEFAULT_SET)
    if not os.path.isfile(path):
        raise ValueError(f'labelled prompt set {path!r} does not exist; pass --set=FILE.jsonl.')
    rows = []
    with open(path, encoding='utf-8') as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            r = json.loads(line)
            missing = {'text', 'lang', 'label', 'category', 'kind', 'split'} - set(r)
            if missing or r['label'] not in LABELS or r['split'] != split_of(r['text']):
                raise ValueError(
                    f'{path}:{i}: row {r!r} needs text, lang, label in {LABELS}, category, '
                    f'kind and split == split_of(text) ({split_of(r.get("text", ""))!r}).'
                )
            rows.append(r)
    return rows


@dataclasses.dataclass(frozen=True)
class Counts:
    """Confusion counts of one group; precision/recall are 1.0 when undefined (no refusals /
    no harmful rows)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    right_category: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def add(self, harmful: bool, refused: bool, right: bool) -> 'Counts':
        return Counts(
            self.tp + (harmful and refused),
            self.fp + (not harmful and refused),
            self.fn + (harmful and not refused),
            self.tn + (not harmful and not refused),
            self.right_category + (harmful and refused and right),
        )


def evaluate(check: Callable, rows: list[dict]) -> dict:
    """Runs `check(text) -> Verdict` (fields allowed, category, match) over the rows.

    Returns {'groups': [{split, lang, category, n, tp, fp, fn, tn, precision, recall,
    right_category}], 'misses': [tune-split rows the checker got wrong, with what it said]}.
    Groups: every (split, lang, category), every (split, lang, 'all') and (split, 'all', 'all').
    """
    counts: dict[tuple, Counts] = {}
    misses = []
    for r in rows:
        v = check(r['text'])
        harmful, refused = r['label'] == 'harmful', not v.allowed
        right = refused and v.category == r['category']
        for key in (
            (r['split'], r['lang'], r['category']),
            (r['split'], r['lang'], 'all'),
            (r['split'], 'all', 'all'),
        ):
            counts[key] = counts.get(key, Counts()).add(harmful, refused, right)
        if harmful != refused and r['split'] == 'tune':
            misses.append({**r, 'got': v.category, 'match': v.match})
    groups = []
    for (split, lang, cat), c in sorted(counts.items(), key=lambda kv: _order(kv[0])):
        groups.append(
            {
                'split': split,
                'lang': lang,
                'category': cat,
                'n': c.tp + c.fp + c.fn + c.tn,
                **dataclasses.asdict(c),
                'precision': round(c.precision, 4),
                'recall': round(c.recall, 4),
            }
        )
    return {'groups': groups, 'misses': misses}


def _order(key):
    split, lang, cat = key
    return (SPLITS.index(split), lang == 'all', lang, cat == 'all', cat)


def format_table(report: dict) -> str:
    """A fixed-width table: split, lang, category, n, TP/FP/FN, precision, recall."""
    lines = [
        f'{"split":8} {"lang":4} {"category":17} {"n":>4} {"tp":>4} {"fp":>4} {"fn":>4} '
        f'{"prec":>6} {"recall":>6}'
    ]
    for g in report['groups']:
        lines.append(
            f'{g["split"]:8} {g["lang"]:4} {g["category"]:17} {g["n"]:4d} {g["tp"]:4d} '
            f'{g["fp"]:4d} {g["fn"]:4d} {g["precision"]:6.3f} {g["recall"]:6.3f}'
        )
    return '\n'.join(lines)


def summary(report: dict, split: str = 'heldout') -> dict:
    """{lang: (precision, recall)} of one split, per language and 'all'."""
    return {
        g['lang']: (g['precision'], g['recall'])
        for g in report['groups']
        if g['split'] == split and g['category'] == 'all'
    }
