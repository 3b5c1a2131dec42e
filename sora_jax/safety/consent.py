"""The consent registry: the real people a deployer may depict, and for what.

    reg = Registry.load('consent.jsonl')          # or $SORA_JAX_CONSENT; none: empty
    reg.lookup('pedro sanchez', mode='t2v')        # the live entry (a dict), or None

A JSONL file (one entry a line) or a JSON list the deployer keeps; each entry:

    {"person": "Pedro Sánchez", "aliases": ["presidente del gobierno"], "scope": ["t2v", "i2v"],
     "expires": "2027-06-30", "revoked": false, "id": "consent-0042", "granted": "2026-12-01"}

person: the name as the content policy knows it (sora_jax/safety/policy.json, real_person
people: the first name of an entry, or an office such as "president of france"), compared after
folding (case, accents); aliases: more names that refer to the same person; scope: the
generation modes covered ("t2v", "t2i", "i2v", ... or "*"); expires: an ISO date (UTC, the
entry is live through that day) or null; revoked: true withdraws consent at once. Moderation
(`Moderator.check`) lifts a real_person refusal only when every person named has a live entry,
and the pipeline's caller records those entries in the Content Credentials
(provenance.manifest_info(consent=...)).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import unicodedata

CONSENT_ENV = 'SORA_JAX_CONSENT'
_FIELDS = {'person', 'aliases', 'scope', 'expires', 'revoked', 'id', 'granted', 'note'}


def person_key(name: str) -> str:
    """Folded words ("Pedro Sánchez" -> "pedro sanchez"), as moderation names people."""
    text = unicodedata.normalize('NFKC', name).casefold()
    text = ''.join(c for c in unicodedata.normalize('NFD', text) if not unicodedata.combining(c))
    return ' '.join(re.sub(r'[^a-z0-9]+', ' ', text).split())


@dataclasses.dataclass(frozen=True)
class Registry:
    """Consent entries (dicts as in the file) and the path they came from."""

    entries: tuple = ()
    path: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> 'Registry':
        """The registry at `path`, else $SORA_JAX_CONSENT, else an empty one (nobody)."""
        path = path or os.environ.get(CONSENT_ENV)
        if not path:
            return cls()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ValueError(
                f'consent registry {path!r} does not exist; pass an existing .jsonl/.json file '
                f'(${CONSENT_ENV}), or none for an empty registry.'
            )
        with open(path, encoding='utf-8') as f:
            text = f.read()
        try:
            if text.lstrip().startswith('['):
                entries = json.loads(text)
            else:
                entries = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f'consent registry {path!r} is not valid JSON/JSONL ({e}).')
        for e in entries:
            _validate(e, path)
        return cls(tuple(entries), path)

    def lookup(self, person: str, mode: str = 't2v', today: datetime.date | None = None):
        """The first live entry for `person` (a name or alias) covering `mode`, else None.
        Live: not revoked and not past its expiry date."""
        today = today or datetime.datetime.now(datetime.timezone.utc).date()
        key = person_key(person)
        for e in self.entries:
            names = [e['person'], *e.get('aliases', [])]
            if key not in {person_key(n) for n in names}:
                continue
            if e.get('revoked'):
                continue
            if e.get('expires') and datetime.date.fromisoformat(e['expires']) < today:
                continue
            scope = e.get('scope', ['*'])
            if '*' in scope or mode in scope:
                return dict(e)
        return None


def _validate(e, path):
    if not isinstance(e, dict) or not isinstance(e.get('person'), str) or not e['person'].strip():
        raise ValueError(f'consent registry {path}: entry {e!r} needs a "person" name.')
    unknown = set(e) - _FIELDS
    if unknown:
        raise ValueError(
            f'consent registry {path}: entry for {e["person"]!r} has unknown fields '
            f'{sorted(unknown)}; use {sorted(_FIELDS)}.'
        )
    scope = e.get('scope', ['*'])
    if not isinstance(scope, list) or not all(isinstance(s, str) for s in scope):
        raise ValueError(
            f'consent registry {path}: scope of {e["person"]!r} is {scope!r}; give a list of '
            'modes such as ["t2v", "i2v"], or ["*"].'
        )
    if e.get('expires') is not None:
        try:
            datetime.date.fromisoformat(e['expires'])
        except (TypeError, ValueError):
            raise ValueError(
                f'consent registry {path}: expires of {e["person"]!r} is {e["expires"]!r}; '
                'give an ISO date such as "2027-06-30", or null.'
            )
