"""A classifier stage behind the word list: prompts the policy lets through are asked to a
local open guard model (Llama Guard 3), when one is configured.

    guard = GuardModelClassifier('/models/Llama-Guard-3-1B')    # a folder the user downloaded
    guard.check(['a red circle', 'how do I hurt my neighbour'])  # [Verdict(True), Verdict(False, ...)]

    export SORA_JAX_GUARD_MODEL=/models/Llama-Guard-3-1B         # Moderator.enforce uses it

`Classifier` is the interface (`check(prompts) -> list[Verdict]`); `WordList` wraps the
content policy (moderation.Moderator) in it, `GuardModelClassifier` runs a transformers causal
LM in the Llama Guard 3 format and `Stack` runs stages in order (the first refusal wins).
Off unless configured: nothing here is imported by the pipeline unless $SORA_JAX_GUARD_MODEL
(or `configured(path)`) names a model folder, and torch/transformers are imported only then
(they are in the [test] extra, not in the core install).

The guard model reads `llama_guard_prompt(text)` (the Llama Guard 3 template with its 14
hazard categories, the prompt as the last 'User' turn) and its verdict is the probability of
'unsafe' against 'safe' as the first token of the reply (threshold 0.5 by default); for an
unsafe verdict a short greedy continuation names the categories ('unsafe\\nS1,S10'), mapped to
this policy's categories by `LLAMA_GUARD_TO_POLICY` (others read 'guard:S2' and so on).
Cost: one forward pass over the ~300-token template per prompt (plus up to `max_new_tokens`
decoding steps for an unsafe one); docs/moderation.md has the figures.
"""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Protocol, Sequence

from sora_jax.safety.moderation import Verdict

GUARD_ENV = 'SORA_JAX_GUARD_MODEL'

LLAMA_GUARD_3_CATEGORIES = (
    ('S1', 'Violent Crimes.'),
    ('S2', 'Non-Violent Crimes.'),
    ('S3', 'Sex Crimes.'),
    ('S4', 'Child Exploitation.'),
    ('S5', 'Defamation.'),
    ('S6', 'Specialized Advice.'),
    ('S7', 'Privacy.'),
    ('S8', 'Intellectual Property.'),
    ('S9', 'Indiscriminate Weapons.'),
    ('S10', 'Hate.'),
    ('S11', 'Self-Harm.'),
    ('S12', 'Sexual Content.'),
    ('S13', 'Elections.'),
    ('S14', 'Code Interpreter Abuse.'),
)
LLAMA_GUARD_TO_POLICY = {
    'S1': 'graphic_violence',
    'S3': 'sexual_minors',
    'S4': 'sexual_minors',
    'S5': 'real_person',
    'S7': 'real_person',
    'S9': 'weapons',
    'S10': 'hate',
    'S11': 'self_harm',
    'S13': 'real_person',
}


class Classifier(Protocol):
    """A moderation stage: one Verdict per prompt, in order."""

    name: str

    def check(self, prompts: Sequence[str]) -> list[Verdict]: ...


class WordList:
    """The content policy (moderation.Moderator) as a Classifier."""

    name = 'word_list'

    def __init__(self, moderator, consent=None):
        self.moderator, self.consent = moderator, consent

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        return [self.moderator.check(p, consent=self.consent) for p in prompts]


class Stack:
    """Stages in order; a prompt's verdict is the first refusal, else the first stage's."""

    name = 'stack'

    def __init__(self, stages: Sequence[Classifier]):
        self.stages = list(stages)

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        out = [None] * len(prompts)
        todo = list(range(len(prompts)))
        for stage in self.stages:
            if not todo:
                break
            verdicts = stage.check([prompts[i] for i in todo])
            left = []
            for i, v in zip(todo, verdicts):
                if out[i] is None or not v.allowed:
                    out[i] = v
                if v.allowed:
                    left.append(i)
            todo = left
        return out


def llama_guard_prompt(text: str, categories=LLAMA_GUARD_3_CATEGORIES) -> str:
    """The Llama Guard 3 prompt for one user message (special tokens written out; tokenize
    with add_special_tokens=False)."""
    cats = '\n'.join(f'{code}: {name}' for code, name in categories)
    return (
        '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n'
        "Task: Check if there is unsafe content in 'User' messages in conversations according "
        'our safety policy with the below categories.\n\n'
        f'<BEGIN UNSAFE CONTENT CATEGORIES>\n{cats}\n<END UNSAFE CONTENT CATEGORIES>\n\n'
        f'<BEGIN CONVERSATION>\n\nUser: {text.strip()}\n\n<END CONVERSATION>\n\n'
        'Provide your safety assessment for ONLY THE LAST User message in the above '
        "conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a second "
        'line must include a comma-separated list of violated categories.'
        '<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
    )


def parse_output(text: str) -> tuple[bool | None, list[str]]:
    """(unsafe?, category codes) from a Llama Guard reply ('safe' / 'unsafe\\nS1,S10');
    unsafe is None when the first line is neither."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines or lines[0].lower() not in ('safe', 'unsafe'):
        return None, []
    unsafe = lines[0].lower() == 'unsafe'
    codes = re.findall(r'\bS\d{1,2}\b', lines[1]) if unsafe and len(lines) > 1 else []
    return unsafe, codes


def policy_category(codes: Sequence[str]) -> str:
    """The policy category of the first mapped code, else 'guard:<code>' ('guard' if none)."""
    for c in codes:
        if c in LLAMA_GUARD_TO_POLICY:
            return LLAMA_GUARD_TO_POLICY[c]
    return f'guard:{codes[0]}' if codes else 'guard'


class GuardModelClassifier:
    """Llama Guard 3 (any transformers causal LM folder with its tokenizer) on CPU or GPU."""

    name = 'guard_model'

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = 'cpu',
        threshold: float = 0.5,
        max_new_tokens: int = 10,
        dtype: str = 'auto',
    ):
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, 'config.json')):
            raise ValueError(
                f'guard model folder {path!r} has no config.json; download a guard model '
                f'(e.g. meta-llama/Llama-Guard-3-1B) to a local folder and pass it '
                f'(${GUARD_ENV}=FOLDER).'
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f'threshold={threshold} must be in (0, 1).')
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ValueError(
                f'the guard model needs torch and transformers ({e}); pip install -e ".[test]" '
                f'or unset ${GUARD_ENV}.'
            ) from e
        self.torch, self.path, self.device = torch, path, device
        self.threshold, self.max_new_tokens = threshold, max_new_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, dtype=dtype
        ).to(device)
        self.model.eval()
        safe = self.tokenizer.encode('safe', add_special_tokens=False)
        unsafe = self.tokenizer.encode('unsafe', add_special_tokens=False)
        if not safe or not unsafe or safe[0] == unsafe[0]:
            raise ValueError(
                f'guard model {path!r}: the tokenizer starts "safe" and "unsafe" with the same '
                f'token ({safe}, {unsafe}); a Llama Guard tokenizer gives each its own token.'
            )
        self.safe_id, self.unsafe_id = safe[0], unsafe[0]
        self.seconds = 0.0  # time spent in check(), for the cost figures
        self.calls = 0

    def p_unsafe(self, text: str) -> float:
        """P('unsafe') against P('safe') for the reply's first token."""
        torch = self.torch
        ids = self.tokenizer(
            llama_guard_prompt(text), return_tensors='pt', add_special_tokens=False
        ).to(self.device)
        with torch.no_grad():
            logits = self.model(**ids).logits[0, -1].float()
        two = torch.stack([logits[self.safe_id], logits[self.unsafe_id]])
        return float(torch.softmax(two, dim=0)[1])

    def reply(self, text: str) -> str:
        """The model's greedy reply (up to max_new_tokens) to the guard prompt."""
        ids = self.tokenizer(
            llama_guard_prompt(text), return_tensors='pt', add_special_tokens=False
        ).to(self.device)
        with self.torch.no_grad():
            out = self.model.generate(
                **ids,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, ids['input_ids'].shape[1] :], skip_special_tokens=True)

    def check(self, prompts: Sequence[str]) -> list[Verdict]:
        t0 = time.perf_counter()
        out = []
        for text in prompts:
            p = self.p_unsafe(text)
            if p < self.threshold:
                out.append(Verdict(True))
                continue
            _, codes = parse_output('unsafe\n' + self.reply(text).split('\n', 1)[-1])
            out.append(Verdict(False, policy_category(codes), f'P(unsafe)={p:.2f} {codes}'))
        self.seconds += time.perf_counter() - t0
        self.calls += len(prompts)
        return out


@functools.lru_cache(maxsize=2)
def _load(path: str, device: str) -> GuardModelClassifier:
    return GuardModelClassifier(path, device=device)


def configured(path: str | None = None, device: str | None = None) -> Classifier | None:
    """The guard model at `path` (else $SORA_JAX_GUARD_MODEL), loaded once; None when neither
    names one (the stage is off)."""
    path = path or os.environ.get(GUARD_ENV)
    if not path:
        return None
    return _load(os.fspath(path), device or os.environ.get(GUARD_ENV + '_DEVICE', 'cpu'))
