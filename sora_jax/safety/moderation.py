"""Prompt moderation: a replaceable content policy (JSON) matched on folded, de-obfuscated text.

    mod = Moderator.load()               # sora_jax/safety/policy.json, or $SORA_JAX_POLICY
    mod.check('a red circle').allowed    # True
    mod.enforce('a d.e.c.a.p.i.t.a.t.i.o.n')  # raises PromptRefused(category='graphic_violence')

Folding (`fold_variants`): Unicode NFKC, case folding, accents stripped, then three views of the
text, each with repeated letters collapsed ("kiiill" -> "kil"; policy terms are collapsed the
same way): the plain words; the words with leetspeak undone ("k1ll", "$uicide") and letters
split by spaces/dots/dashes joined ("k i l l", "s.u.i.c.i.d.e"); and one string with every
non-letter removed, searched only for the policy's 'squash' strings. Terms match whole words,
so benign prompts that contain a term inside a word ("a cocktail", "a skilled painter") pass;
verbs that are harmless with an object that is not a person ("shoot a video of the sunset",
"disparar una foto") are only refused through patterns that need a person as the object.

This is a keyword / pattern filter, not a classifier: it stops the obvious requests and their
usual spellings, not paraphrases a list does not name (README, "Safeguards and provenance").
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import unicodedata

DEFAULT_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'policy.json')
POLICY_ENV = 'SORA_JAX_POLICY'

_LEET = str.maketrans(
    {
        '0': 'o',
        '1': 'i',
        '3': 'e',
        '4': 'a',
        '5': 's',
        '7': 't',
        '8': 'b',
        '9': 'g',
        '@': 'a',
        '$': 's',
        '!': 'i',
        '|': 'i',
        '+': 't',
        '€': 'e',
        '¡': 'i',
    }
)
_SUFFIX = r'(?:s|es|ed|d|ing|er|ers)?'


class PromptRefused(ValueError):
    """A prompt the content policy refuses; `category` names the policy category."""

    def __init__(self, category: str, description: str, match: str):
        self.category, self.description, self.match = category, description, match
        super().__init__(
            f'Prompt refused by the content policy: category {category!r} ({description}); '
            f'matched {match!r}. Rephrase the prompt; to use a different policy pass '
            f'--moderation_policy=FILE (or set ${POLICY_ENV}).'
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    allowed: bool
    category: str | None = None
    match: str | None = None


def _strip_accents(text: str) -> str:
    return ''.join(c for c in unicodedata.normalize('NFD', text) if not unicodedata.combining(c))


def _collapse(text: str) -> str:
    """Runs of one repeated letter -> one letter ("kiiill" -> "kil")."""
    return re.sub(r'([a-z])\1+', r'\1', text)


def _words(text: str) -> str:
    return ' '.join(re.sub(r'[^a-z0-9]+', ' ', text).split())


def _join_split_letters(text: str) -> str:
    """ "k i l l" / "k.i.l.l" / "ki-ll" -> "kill": separators between letters inside a word
    go, and runs of single letters separated by spaces join into one word."""
    text = re.sub(r'(?<=[a-z])[.\-_*·•~\'`]+(?=[a-z])', '', text)
    return re.sub(
        r'\b[a-z](?:[ .\-_*]+[a-z]\b){2,}', lambda m: re.sub(r'[^a-z]', '', m.group(0)), text
    )


def fold(text: str) -> str:
    """NFKC, case folding and accent stripping (the base every view starts from)."""
    if not isinstance(text, str):
        raise ValueError(f'moderation needs a string prompt, got {type(text).__name__}: {text!r}.')
    return _strip_accents(unicodedata.normalize('NFKC', text).casefold())


def fold_variants(text: str) -> tuple[list[str], str]:
    """([plain words, de-obfuscated words], squashed letters), all with repeats collapsed."""
    base = fold(text)
    plain = _collapse(_words(base))
    deob = re.sub(r'[!|¡]+(?=\s|$)', ' ', base).translate(_LEET)  # "hi!!" is no leet
    deob = _collapse(_words(_join_split_letters(deob)))
    squashed = _collapse(re.sub(r'[^a-z]+', '', deob))
    return [plain, deob] if deob != plain else [plain], squashed


def _term_regex(term: str) -> str:
    t = _collapse(_words(fold(term)))
    if term.endswith('*'):
        return r'\b' + re.escape(t).replace(r'\ ', r'\s+') + r'[a-z]*\b'
    return r'\b' + re.escape(t).replace(r'\ ', r'\s+') + _SUFFIX + r'\b'


@dataclasses.dataclass
class _Category:
    name: str
    description: str
    regexes: list  # [(compiled, source label)]
    pairs: list  # [(set a, set b, window)]
    squash: list  # collapsed strings
    allow: list  # compiled regexes removed before matching


class Moderator:
    """A compiled content policy; `check` returns a Verdict, `enforce` raises PromptRefused."""

    def __init__(self, policy: dict, source: str = '<dict>'):
        cats = policy.get('categories') if isinstance(policy, dict) else None
        if not isinstance(cats, dict) or not cats:
            raise ValueError(
                f'moderation policy {source} has no "categories" object; see '
                f'{DEFAULT_POLICY} for the format.'
            )
        self.source, self.name = source, str(policy.get('name', source))
        self.categories = []
        for name, c in cats.items():
            unknown = set(c) - {'description', 'terms', 'patterns', 'pairs', 'squash', 'allow'}
            if unknown:
                raise ValueError(
                    f'moderation policy {source}: category {name!r} has unknown keys '
                    f'{sorted(unknown)}; use terms, patterns, pairs, squash, allow.'
                )
            regexes = []
            for t in c.get('terms', []):
                if len(_collapse(_words(fold(t))).replace(' ', '')) < 3:
                    raise ValueError(
                        f'moderation policy {source}: term {t!r} of {name!r} folds to '
                        'fewer than 3 letters (repeats collapse: "kkk" -> "k") and '
                        'would match everywhere; use a pattern or a longer term.'
                    )
                regexes.append((re.compile(_term_regex(t)), t))
            for p in c.get('patterns', []):
                try:
                    regexes.append((re.compile(_collapse(p)), p))
                except re.error as e:
                    raise ValueError(
                        f'moderation policy {source}: category {name!r} pattern {p!r} '
                        f'is not a valid regular expression ({e}); fix or remove it.'
                    )
            pairs = []
            for pr in c.get('pairs', []):
                if not {'a', 'b'} <= set(pr):
                    raise ValueError(
                        f'moderation policy {source}: a pair of {name!r} needs "a" and '
                        f'"b" word lists, got keys {sorted(pr)}.'
                    )
                norm = lambda ws: {_collapse(_words(fold(w))) for w in ws}  # noqa: E731
                pairs.append((norm(pr['a']), norm(pr['b']), int(pr.get('window', 6))))
            squash = [_collapse(re.sub(r'[^a-z]+', '', fold(s))) for s in c.get('squash', [])]
            allow = [re.compile(_term_regex(a)) for a in c.get('allow', [])]
            self.categories.append(
                _Category(name, str(c.get('description', name)), regexes, pairs, squash, allow)
            )

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> 'Moderator':
        """The policy at `path`, else $SORA_JAX_POLICY, else the shipped policy.json."""
        path = os.fspath(path or os.environ.get(POLICY_ENV) or DEFAULT_POLICY)
        return _load_cached(path)

    def check(self, prompt: str) -> Verdict:
        views, squashed = fold_variants(prompt)
        for c in self.categories:
            for v in views:
                for a in c.allow:
                    v = a.sub(' ', v)
                for rx, label in c.regexes:
                    m = rx.search(v)
                    if m:
                        return Verdict(False, c.name, m.group(0))
                words = v.split()
                for a, b, window in c.pairs:
                    ia = [i for i, w in enumerate(words) if w in a]
                    ib = [i for i, w in enumerate(words) if w in b]
                    hit = next(((i, j) for i in ia for j in ib if abs(i - j) <= window), None)
                    if hit:
                        return Verdict(False, c.name, f'{words[hit[0]]} ... {words[hit[1]]}')
            for s in c.squash:
                if s and s in squashed:
                    return Verdict(False, c.name, s)
        return Verdict(True)

    def enforce(self, prompts) -> None:
        """Raises PromptRefused for the first refused prompt (a string or a list of them)."""
        for p in [prompts] if isinstance(prompts, str) else list(prompts):
            v = self.check(p)
            if not v.allowed:
                desc = next(c.description for c in self.categories if c.name == v.category)
                raise PromptRefused(v.category, desc, v.match)


@functools.lru_cache(maxsize=8)
def _load_cached(path: str) -> Moderator:
    if not os.path.isfile(path):
        raise ValueError(
            f'moderation policy {path!r} does not exist; pass an existing JSON file '
            f'(format: {DEFAULT_POLICY}).'
        )
    try:
        with open(path, encoding='utf-8') as f:
            policy = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f'moderation policy {path!r} is not valid JSON ({e}); fix the file.')
    return Moderator(policy, source=path)
