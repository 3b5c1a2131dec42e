"""Words for the content policy: folding, de-obfuscation, tokens, stems and negation.

    fold('Ｋ.I.L.L  th3 Määän!!')               # 'k.i.l.l  th3 maaan!!' (NFKC, case, accents)
    tokens(join_split_letters(deleet(...)))    # ['kill', 'the', 'maan', '|']
    word_keys('decapitando')                   # its forms: itself, English and Spanish stems
    negated_positions(['sin', 'sangre', 'ni', 'violencia'])  # [False, True, False, True]

Stems come from the Snowball stemmers (snowballstemmer, which uses PyStemmer's C build of the
same algorithms when installed): a policy word matches a prompt word when they share a form
(`word_keys`): the word with repeated letters collapsed, or its English or its Spanish stem.
"""

from __future__ import annotations

import functools
import re
import unicodedata

LEET = str.maketrans(
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
BREAK = '|'  # a clause break (punctuation) in a token list
NEGATORS = frozenset({'no', 'not', 'without', 'never', 'nor', 'sin', 'ni', 'nunca', 'zero'})
# Between a negation and what it negates: determiners, "any", and list joiners.
NEG_SKIP = frozenset(
    'a an the any explicit graphic real visible much shown or and el la los las un una '
    'ningun ninguna nada de o y e u mas'.split()
)
REFLEXIVE = re.compile(r'^([a-z]+?)(andose|iendose|arse|erse|irse|andome|iendome|arme|erme|irme)$')


def strip_accents(text: str) -> str:
    return ''.join(c for c in unicodedata.normalize('NFD', text) if not unicodedata.combining(c))


def collapse(text: str) -> str:
    """Runs of one repeated letter -> one letter ("kiiill" -> "kil")."""
    return re.sub(r'([a-z])\1+', r'\1', text)


def words(text: str) -> str:
    return ' '.join(re.sub(r'[^a-z0-9]+', ' ', text).split())


def join_split_letters(text: str) -> str:
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
    return strip_accents(unicodedata.normalize('NFKC', text).casefold())


def deleet(base: str) -> str:
    """Leetspeak undone inside tokens that hold a letter ("k1ll" -> "kill", "13" stays)."""
    base = re.sub(r'[!|¡]+(?=\s|$)', ' ', base)  # "hi!!" is no leet

    def tok(m):
        t = m.group(0)
        if not re.search(r'[a-z]', t) or re.fullmatch(r'\d+d', t):  # "13", "3d"
            return t
        return t.translate(LEET)

    return re.sub(r'\S+', tok, base)


def fold_variants(text: str) -> tuple[list[str], str]:
    """([plain words, de-obfuscated words], squashed letters), all with repeats collapsed."""
    base = fold(text)
    plain = collapse(words(base))
    deob = collapse(words(join_split_letters(deleet(base))))
    squashed = collapse(re.sub(r'[^a-z]+', '', deob))
    return [plain, deob] if deob != plain else [plain], squashed


def tokens(text: str) -> list[str]:
    """Words with punctuation as `BREAK` tokens ("no gore, a man" -> no gore | a man)."""
    text = re.sub(r'[,.;:!?()\[\]"]+', f' {BREAK} ', text)
    return runs(' '.join(re.sub(r'[^a-z0-9|]+', ' ', text).split())).split()


@functools.lru_cache(maxsize=1)
def _stemmers():
    try:
        import snowballstemmer
    except ImportError as e:  # a core dependency (setup.py)
        raise ValueError(
            'moderation needs snowballstemmer (a core dependency): pip install -e . '
            f'(or pip install snowballstemmer); {e}'
        ) from e
    return snowballstemmer.stemmer('english'), snowballstemmer.stemmer('spanish')


@functools.lru_cache(maxsize=65536)
def stems(word: str) -> tuple[str, str]:
    """(English stem, Spanish stem) of a folded word; stems under 3 letters are the word."""
    en, es = _stemmers()
    a, b = en.stemWord(word), es.stemWord(word)
    return (a if len(a) >= 3 else word, b if len(b) >= 3 else word)


@functools.lru_cache(maxsize=65536)
def word_keys(word: str) -> frozenset:
    """The forms a word matches by: itself with repeats collapsed, and its English and Spanish
    stems, of the word and of its collapsed form ("stabbing", "stabbbing" -> stem "stab")."""
    c = collapse(word)
    (e1, s1), (e2, s2) = stems(word), stems(c)
    return frozenset({('w', c), ('e', e1), ('s', s1), ('e', e2), ('s', s2)})


class Word:
    """One policy word: prefix (trailing *) or any shared form (`word_keys`)."""

    __slots__ = ('word', 'prefix', 'keys')

    def __init__(self, w: str):
        self.prefix = w.endswith('*')
        self.word = collapse(w.rstrip('*'))
        self.keys = word_keys(w.rstrip('*'))

    def matches(self, token: str) -> bool:
        if self.prefix:
            return collapse(token).startswith(self.word)
        return not self.keys.isdisjoint(word_keys(token))


def runs(text: str) -> str:
    """Runs of 3+ repeated letters -> 2 ("stabbbbing" -> "stabbing")."""
    return re.sub(r'([a-z])\1{2,}', r'\1\1', text)


def norm(phrase: str) -> list[str]:
    keep_star = phrase.rstrip().endswith('*')
    out = runs(words(fold(phrase))).split()
    if keep_star and out:
        out[-1] += '*'
    return out


class Phrase:
    """A policy term of one or more words, matched on a token list."""

    def __init__(self, text: str):
        self.text = text
        self.words = [Word(w) for w in norm(text)]
        self.negating = bool(self.words) and self.words[0].word in NEGATORS


def negated_positions(toks: list[str]) -> list[bool]:
    """True for the words a negation governs: the next content word after "no"/"without"/"sin"
    (skipping determiners and "any"), and list members joined to it ("sin sangre ni violencia",
    "no blood or gore"); a clause break ends the scope."""
    out = [False] * len(toks)
    active = False
    for i, t in enumerate(toks):
        if t == BREAK:
            active = False
        elif t in NEGATORS:
            active = True
        elif active and t in NEG_SKIP:
            continue
        elif active:
            out[i] = True
            nxt = toks[i + 1] if i + 1 < len(toks) else BREAK
            active = nxt in ('or', 'nor', 'ni', 'o', 'and', 'y', 'e', 'u')
    return out
