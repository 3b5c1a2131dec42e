"""Prompt moderation: a replaceable content policy (JSON) matched on folded, de-obfuscated,
stemmed words, with negation, and real people refused unless a consent registry covers them.

    mod = Moderator.load()               # sora_jax/safety/policy.json, or $SORA_JAX_POLICY
    mod.check('a red circle').allowed    # True
    mod.enforce('a d.e.c.a.p.i.t.a.t.i.o.n')  # raises PromptRefused(category='graphic_violence')
    mod.check('Shakira en una rueda de prensa', consent=registry)  # allowed if registered

Text (sora_jax/safety/words.py): Unicode NFKC, case folding, accents stripped; two views, each
a list of words (punctuation kept as clause breaks; runs of 3+ letters cut to 2): the plain words, and the words with leetspeak undone inside words that hold letters ("k1ll",
"$uicide"; "13" stays a number), letters split by dots/dashes/spaces joined ("k i l l",
"s.u.i.c.i.d.e") and neighbouring fragments the policy knows joined ("ju díos" -> "judios");
plus one string with every non-letter removed, searched only for the policy's 'squash' strings.

Morphology comes from the Snowball stemmers (snowballstemmer, English and Spanish): a policy
word matches a prompt word when the two share their English or their Spanish stem, or their
letters with repeats collapsed ("kiiill" = "kill"), so "decapitar" covers "decapitando" and
"behead" covers "beheading". Spanish reflexive verb forms ("cortándose", "ahorcarse") are
matched by the policy's 'reflexive' verbs. A term, or a word of a pair, right after a negation
("no gore", "without blood", "sin sangre ni violencia") does not count; policy terms that begin
with the negation ("no clothes", "sin ropa") match as written.

Categories hold 'terms' (words or phrases; a trailing * matches any ending), 'pairs' (a word
of list a and one of list b within `window` words; `ordered`: a first; lists may name a shared
'concepts' list as "@NAME"), regular expression 'patterns' over the folded text, 'squash'
strings, 'reflexive' Spanish verbs, and 'allow' phrases removed before matching. The
real_person category also holds 'people' (names and aliases), 'offices' (titles such as
"president" or "papa" that name a person when followed by a country, or alone for unique ones)
and 'stylized' words (cartoon, caricature, ...) that make a depiction of a public figure
allowed. A real-person refusal is lifted when every person named has a live entry in the
consent registry (sora_jax/safety/consent.py); other categories are never lifted.

This is a lexical filter: paraphrases with none of its words still pass. A classifier stage
(sora_jax/safety/classifier.py) can sit behind it; docs/moderation.md has its figures.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import NamedTuple

from sora_jax.safety.words import (  # noqa: F401  (fold, fold_variants: the public API)
    BREAK,
    REFLEXIVE,
    Phrase,
    collapse,
    deleet,
    fold,
    fold_variants,
    join_split_letters,
    negated_positions,
    norm,
    stems,
    tokens,
    word_keys,
    words,
)

DEFAULT_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'policy.json')
POLICY_ENV = 'SORA_JAX_POLICY'
REAL_PERSON = 'real_person'


class PromptRefused(ValueError):
    """A prompt the content policy refuses; `category` names the policy category."""

    def __init__(self, category: str, description: str, match: str):
        self.category, self.description, self.match = category, description, match
        extra = (
            ' A real person may be depicted only with their consent: add an entry to the '
            'consent registry ($SORA_JAX_CONSENT, '
            'sora_jax/safety/consent.py).'
            if category == REAL_PERSON
            else ''
        )
        super().__init__(
            f'Prompt refused by the content policy: category {category!r} ({description}); '
            f'matched {match!r}. Rephrase the prompt; to use a different policy pass '
            f'--moderation_policy=FILE (or set ${POLICY_ENV}).{extra}'
        )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """allowed; the refusing category and what matched; `people`: the real people the prompt
    names (registry keys); `consent`: the registry entries that allowed them."""

    allowed: bool
    category: str | None = None
    match: str | None = None
    people: tuple = ()
    consent: tuple = ()


# ---------------------------------------------------------------- policy
@dataclasses.dataclass
class _Category:
    name: str
    description: str
    term_ids: set  # ids of the term phrases
    patterns: list  # [(compiled, source)]
    pairs: list  # [(phrase ids a, phrase ids b, window, ordered)]
    squash: list  # collapsed strings
    allow: list  # compiled regexes removed before the patterns match
    allow_phrases: list  # [Phrase] whose words no term or pair may use
    reflexive: set  # Spanish stems of verbs whose reflexive forms count


class _View(NamedTuple):
    toks: list  # words and BREAK tokens
    neg: list  # negated_positions(toks)
    hits: dict  # {phrase id: start positions}


@dataclasses.dataclass
class _People:
    names: list  # [(key, [Phrase])]
    offices: list  # [(title Phrase, needs_country)]
    countries: list  # [Phrase]
    stylized: list  # [Phrase]
    realistic: list  # [Phrase]: words that cancel a stylized framing


_KEYS = {'description', 'terms', 'patterns', 'pairs', 'squash', 'allow', 'reflexive'}
_PEOPLE_KEYS = {'people', 'offices', 'unique_offices', 'countries', 'stylized', 'realistic'}


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
        concepts = policy.get('concepts', {})
        self.categories, self.people, self._vocab = [], None, set()
        self._phrases, self._index, self._prefixed, self._by_text = [], {}, [], {}
        self._squash_people = []

        def phrases(items, where, short_ok=False):
            out = []
            for t in items:
                if t.startswith('@'):
                    if t[1:] not in concepts:
                        raise ValueError(
                            f'moderation policy {source}: {where} names concept {t!r}, which '
                            f'is not in "concepts" ({sorted(concepts)}); define it or fix the name.'
                        )
                    out += phrases(concepts[t[1:]], where)
                    continue
                letters = collapse(words(fold(t))).replace(' ', '')
                if len(letters) < 3 and not short_ok:
                    raise ValueError(
                        f'moderation policy {source}: term {t!r} of {where} folds to fewer '
                        'than 3 letters (repeats collapse: "kkk" -> "k") and would match '
                        'everywhere; use a pattern or a longer term.'
                    )
                out.append(self._register(Phrase(t)))
            return out

        for name, c in cats.items():
            unknown = set(c) - _KEYS - (_PEOPLE_KEYS if name == REAL_PERSON else set())
            if unknown:
                raise ValueError(
                    f'moderation policy {source}: category {name!r} has unknown keys '
                    f'{sorted(unknown)}; use {sorted(_KEYS)}'
                    + (f' (and {sorted(_PEOPLE_KEYS)} in {REAL_PERSON!r}).' if name else '.')
                )
            patterns = []
            for p in c.get('patterns', []):
                try:
                    patterns.append((re.compile(collapse(p)), p))
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
                pairs.append(
                    (
                        {p.id for p in phrases(pr['a'], name)},
                        {p.id for p in phrases(pr['b'], name)},
                        int(pr.get('window', 6)),
                        bool(pr.get('ordered', False)),
                    )
                )
            squash = [collapse(re.sub(r'[^a-z]+', '', fold(s))) for s in c.get('squash', [])]
            allow = [
                re.compile(r'\b' + r'\s+'.join(map(re.escape, norm(a))) + r'[a-z]*\b')
                for a in c.get('allow', [])
            ]
            reflexive = {stems(fold(v))[1] for v in c.get('reflexive', [])}
            self.categories.append(
                _Category(
                    name,
                    str(c.get('description', name)),
                    {p.id for p in phrases(c.get('terms', []), name)},
                    patterns,
                    pairs,
                    squash,
                    allow,
                    phrases(c.get('allow', []), name),
                    reflexive,
                )
            )
            if name == REAL_PERSON:
                names = []
                for person in c.get('people', []):
                    ps = [person] if isinstance(person, str) else list(person)
                    names.append((_key(ps[0]), phrases(ps, name)))
                    for a in ps:
                        s = collapse(re.sub(r'[^a-z]+', '', fold(a)))
                        if len(s) >= 8 and ' ' in a.strip():
                            self._squash_people.append((s, _key(ps[0])))
                offices = [(p, True) for p in phrases(c.get('offices', []), name)]
                offices += [(p, False) for p in phrases(c.get('unique_offices', []), name)]
                self.people = _People(
                    names,
                    offices,
                    phrases(c.get('countries', []), name, short_ok=True),
                    phrases(c.get('stylized', []), name),
                    phrases(c.get('realistic', []), name),
                )

    def _register(self, p: Phrase) -> Phrase:
        """Gives the phrase an id and indexes it by its first word's forms (one id a text)."""
        if p.text in self._by_text:
            return self._by_text[p.text]
        self._by_text[p.text] = p
        p.id = len(self._phrases)
        self._phrases.append(p)
        self._vocab.update(w.word for w in p.words if not w.prefix)
        if p.words and p.words[0].prefix:
            self._prefixed.append(p)
        elif p.words:
            for k in p.words[0].keys:
                self._index.setdefault(k, set()).add(p.id)
        return p

    def _hits(self, toks: list[str], neg: list[bool]) -> dict[int, list[int]]:
        """{phrase id: start positions where it matches, not negated} for every policy phrase."""
        out: dict[int, list[int]] = {}
        for i, t in enumerate(toks):
            if t == BREAK:
                continue
            cand = set()
            for k in word_keys(t):
                cand |= self._index.get(k, set())
            tc = collapse(t)
            cand.update(p.id for p in self._prefixed if tc.startswith(p.words[0].word))
            for pid in cand:
                p = self._phrases[pid]
                if neg[i] and not p.negating:
                    continue
                k = len(p.words)
                if i + k <= len(toks) and all(
                    toks[i + j] != BREAK and p.words[j].matches(toks[i + j]) for j in range(1, k)
                ):
                    out.setdefault(pid, []).append(i)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> 'Moderator':
        """The policy at `path`, else $SORA_JAX_POLICY, else the shipped policy.json."""
        path = os.fspath(path or os.environ.get(POLICY_ENV) or DEFAULT_POLICY)
        return _load_cached(path)

    # ------------------------------------------------------------ matching
    def _views(self, prompt: str) -> tuple[list[_View], str]:
        """The plain and the de-obfuscated token lists (with negation and phrase hits), and
        the squashed letters."""
        base = fold(prompt)
        plain = tokens(base)
        deob = self._rejoin(tokens(join_split_letters(deleet(base))))
        squashed = collapse(re.sub(r'[^a-z]+', '', ' '.join(deob)))
        views = []
        for toks in [plain, deob] if deob != plain else [plain]:
            neg = negated_positions(toks)
            views.append(_View(toks, neg, self._hits(toks, neg)))
        return views, squashed

    def _rejoin(self, toks: list[str]) -> list[str]:
        """Neighbouring fragments whose concatenation is a policy word become that word
        ("ju dios" -> "judios", "sup remacia" -> "supremacia"); up to three fragments."""
        out, i = [], 0
        while i < len(toks):
            for k in (3, 2):
                parts = toks[i : i + k]
                if (
                    len(parts) == k
                    and BREAK not in parts
                    and not all(collapse(p) in self._vocab for p in parts)
                    and collapse(''.join(parts)) in self._vocab
                ):
                    out.append(''.join(parts))
                    i += k
                    break
            else:
                out.append(toks[i])
                i += 1
        return out

    def _category_hit(self, c: _Category, v: _View) -> str | None:
        masked = set()
        for a in c.allow_phrases:
            for i in v.hits.get(a.id, ()):
                masked.update(range(i, i + len(a.words)))

        def at(ids):
            return [
                (i, self._phrases[pid])
                for pid, pos in v.hits.items()
                if pid in ids
                for i in pos
                if i not in masked
            ]

        for i, t in at(c.term_ids):
            return ' '.join(v.toks[i : i + len(t.words)])
        for a, b, window, ordered in c.pairs:
            ia = at(a)
            if not ia:
                continue
            for i, pa in ia:
                for j, pb in at(b):
                    d = j - i if ordered else abs(i - j)
                    if 0 < d <= window and BREAK not in v.toks[min(i, j) : max(i, j)]:
                        return f'{pa.text} ... {pb.text}'
        if c.reflexive:
            for i, t in enumerate(v.toks):
                if i not in masked and not v.neg[i] and REFLEXIVE.match(t):
                    if stems(t)[1] in c.reflexive:
                        return t
        return None

    def _match(self, c: _Category, views: list[_View], squashed: str) -> str | None:
        for v in views:
            if c.patterns:
                text = collapse(' '.join(v.toks)).replace(f' {BREAK} ', ' , ')
                for a in c.allow:
                    text = a.sub(' ', text)
                for rx, _ in c.patterns:
                    m = rx.search(text)
                    if m:
                        return m.group(0)
            hit = self._category_hit(c, v)
            if hit:
                return hit
        masked = set()
        v = views[-1]
        for a in c.allow_phrases:
            for i in v.hits.get(a.id, ()):
                masked.update(range(i, i + len(a.words)))
        if masked:  # allowed phrases are not squashed into the letters either
            kept = ' '.join(t for i, t in enumerate(v.toks) if i not in masked)
            squashed = collapse(re.sub(r'[^a-z]+', '', kept))
        for s in c.squash:
            if s and s in squashed:
                return s
        return None

    def _people(self, views: list[_View], squashed: str) -> tuple[list[str], bool]:
        pp = self.people
        if pp is None:
            return [], False
        found = []
        for v in views:
            for key, phrases in pp.names:
                if key not in found and any(v.hits.get(p.id) for p in phrases):
                    found.append(key)
            countries = [(j, p) for p in pp.countries for j in v.hits.get(p.id, ())]
            used = set()  # one title a position ("president" / "presidents" share stems)
            for title, needs_country in pp.offices:
                for i in v.hits.get(title.id, ()):
                    end = i + len(title.words)
                    if used.intersection(range(i, end)):
                        continue
                    if not needs_country:
                        key = _key(title.text)
                    else:  # "president of france", "french president", "presidente de mexico"
                        after = end < len(v.toks) and v.toks[end] in ('of', 'de', 'del')
                        near = [
                            p
                            for j, p in countries
                            if (after and 0 < j - end <= 2) or (0 < i - j <= 2)
                        ]
                        if not near:
                            continue
                        key = _key(f'{title.text} of {near[0].text}')
                    used.update(range(i, end))
                    if key not in found:
                        found.append(key)
        for s, key in self._squash_people:
            if s in squashed and key not in found:
                found.append(key)
        stylized = False
        if found:
            v = views[-1]
            stylized = any(v.hits.get(p.id) for p in pp.stylized) and not any(
                v.hits.get(p.id) for p in pp.realistic
            )
        return found, stylized

    def find_people(self, prompt: str) -> tuple[list[str], bool]:
        """(registry keys of the real people the prompt names, stylized?). Names come from the
        policy's list; office holders are a title with a country ("the president of France",
        "el rey de España", "the British prime minister") or a unique title ("the pope").
        stylized: a cartoon / caricature / painting / clearly fictional framing, and no word
        asking for realism."""
        return self._people(*self._views(prompt))

    def check(self, prompt: str, consent=None, mode: str = 't2v') -> Verdict:
        """The verdict on one prompt. `consent`: a consent.Registry (default: the one at
        $SORA_JAX_CONSENT, if set) that may allow the named real people for `mode`."""
        views, squashed = self._views(prompt)
        rp = None
        for c in self.categories:
            if c.name == REAL_PERSON:
                rp = c
                continue
            hit = self._match(c, views, squashed)
            if hit:
                return Verdict(False, c.name, hit)
        if rp is None:
            return Verdict(True)
        people, stylized = self._people(views, squashed)
        generic = self._match(rp, views, squashed)  # deepfake / impersonation requests
        if generic:
            return Verdict(False, REAL_PERSON, generic, tuple(people))
        if not people or stylized:
            return Verdict(True, people=tuple(people))
        if consent is None:
            from sora_jax.safety import consent as consent_lib

            consent = consent_lib.Registry.load()
        entries = [consent.lookup(p, mode) for p in people]
        missing = [p for p, e in zip(people, entries) if e is None]
        if missing:
            return Verdict(False, REAL_PERSON, ', '.join(missing), tuple(people))
        return Verdict(True, people=tuple(people), consent=tuple(entries))

    def enforce(self, prompts, consent=None, mode: str = 't2v', guard=None) -> list[Verdict]:
        """Raises PromptRefused for the first refused prompt (a string or a list of them);
        returns the verdicts (their `consent` entries go into the Content Credentials).
        Prompts the policy allows then go to the classifier stage `guard` (default: the guard
        model $SORA_JAX_GUARD_MODEL names, if any; sora_jax/safety/classifier.py)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = []
        for p in prompts:
            v = self.check(p, consent=consent, mode=mode)
            if not v.allowed:
                raise PromptRefused(v.category, self.description(v.category), v.match)
            out.append(v)
        if guard is None:
            from sora_jax.safety import classifier

            guard = classifier.configured()
        if guard is not None:
            for v in guard.check(prompts):
                if not v.allowed:
                    raise PromptRefused(v.category, self.description(v.category), v.match)
        return out

    def description(self, category: str) -> str:
        """The policy's description of a category ('flagged by the guard model' for others)."""
        return next(
            (c.description for c in self.categories if c.name == category),
            'flagged by the guard model',
        )


def consent_entries(prompts, policy: str | None = None, mode: str = 't2v') -> list[dict]:
    """The consent registry entries ($SORA_JAX_CONSENT) that allow the real people `prompts`
    name, one per person (for the Content Credentials: provenance.manifest_info(consent=))."""
    mod = Moderator.load(policy)
    out = []
    for p in [prompts] if isinstance(prompts, str) else list(prompts):
        for e in mod.check(p, mode=mode).consent:
            if e not in out:
                out.append(e)
    return out


def _key(name: str) -> str:
    """The registry key of a person: folded words ("Pedro Sánchez" -> "pedro sanchez")."""
    return ' '.join(words(fold(name)).split())


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
