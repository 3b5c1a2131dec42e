"""The guard-model stage: the Llama Guard 3 template, verdict parsing, and the classifier end
to end on a tiny randomly initialised Llama (same architecture, built here, no download) whose
output head is set so the reply's first token is 'unsafe' (or 'safe') for the prompt."""

import os
import time

import pytest

from sora_jax.safety import classifier, moderation
from sora_jax.safety.moderation import Verdict


def test_template_and_parsing():
    p = classifier.llama_guard_prompt('  a red circle  ')
    assert p.startswith('<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n')
    assert '\nS1: Violent Crimes.\n' in p and '\nS14: Code Interpreter Abuse.\n' in p
    assert 'User: a red circle\n\n<END CONVERSATION>' in p
    assert p.endswith('<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n')
    assert classifier.parse_output('safe') == (False, [])
    assert classifier.parse_output('\n\nunsafe\nS1,S10') == (True, ['S1', 'S10'])
    assert classifier.parse_output('unsafe') == (True, [])
    assert classifier.parse_output('I cannot help') == (None, [])
    assert classifier.policy_category(['S10', 'S1']) == 'hate'
    assert classifier.policy_category(['S2']) == 'guard:S2'
    assert classifier.policy_category([]) == 'guard'


class _Fixed:
    name = 'fixed'

    def __init__(self, refuse):
        self.refuse, self.seen = refuse, []

    def check(self, prompts):
        self.seen.append(list(prompts))
        return [
            Verdict(p not in self.refuse, 'hate' if p in self.refuse else None) for p in prompts
        ]


def test_stack_and_enforce():
    a, b = _Fixed({'x'}), _Fixed({'y'})
    got = classifier.Stack([a, b]).check(['x', 'y', 'z'])
    assert [v.allowed for v in got] == [False, False, True]
    assert b.seen == [['y', 'z']]  # the second stage sees only what the first allowed
    mod = moderation.Moderator.load()
    with pytest.raises(moderation.PromptRefused, match="'hate'"):
        mod.enforce(['a red circle', 'y'], guard=_Fixed({'y'}))
    assert mod.enforce(['a red circle'], guard=_Fixed(set()))[0].allowed
    assert classifier.configured(None) is None or os.environ.get(classifier.GUARD_ENV)


@pytest.fixture(scope='module')
def tiny_guard(tmp_path_factory):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    tokenizers = pytest.importorskip('tokenizers')
    d = str(tmp_path_factory.mktemp('tiny_llama_guard'))
    specials = [
        '<|begin_of_text|>',
        '<|start_header_id|>',
        '<|end_header_id|>',
        '<|eot_id|>',
        '<|end_of_text|>',
    ]
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    corpus = [classifier.llama_guard_prompt(t) for t in ('a red circle', 'safe', 'unsafe')]
    corpus += ['safe', 'unsafe', 'unsafe\nS1,S10'] * 20
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token='<|begin_of_text|>', eos_token='<|eot_id|>'
    )
    tok.save_pretrained(d)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d)
    return classifier.GuardModelClassifier(d, dtype='float32')


def _steer(guard, text, unsafe: bool):
    """Sets the output rows of 'safe' / 'unsafe' so the reply's first token is the one asked."""
    torch = guard.torch
    ids = guard.tokenizer(
        classifier.llama_guard_prompt(text), return_tensors='pt', add_special_tokens=False
    )
    with torch.no_grad():
        h = guard.model.model(**ids).last_hidden_state[0, -1]
        w = guard.model.lm_head.weight
        top = float((w @ h).max()) + 5.0
        d = h / (h @ h)
        w[guard.unsafe_id] = d * (top if unsafe else -top)
        w[guard.safe_id] = d * (-top if unsafe else top)


def test_guard_model_end_to_end(tiny_guard):
    text = 'a quiet street at night'
    _steer(tiny_guard, text, unsafe=True)
    assert tiny_guard.p_unsafe(text) > 0.99
    (v,) = tiny_guard.check([text])
    assert not v.allowed and v.category.startswith(
        ('guard',) + tuple(classifier.LLAMA_GUARD_TO_POLICY.values())
    )
    assert tiny_guard.reply(text).startswith('unsafe')  # the greedy reply agrees with the score
    with pytest.raises(moderation.PromptRefused, match='P\\(unsafe\\)'):
        moderation.Moderator.load().enforce([text], guard=tiny_guard)
    _steer(tiny_guard, text, unsafe=False)
    assert tiny_guard.p_unsafe(text) < 0.01
    assert tiny_guard.check([text]) == [Verdict(True)]
    assert tiny_guard.reply(text).startswith('safe')


def test_guard_model_cost(tiny_guard):
    """Per-prompt cost with the tiny model (the plumbing: tokenizing a ~300-token template and
    one forward pass); a real guard model costs what its forward pass costs."""
    torch = tiny_guard.torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a loaded 2-core host cost 50x
    try:
        prompts = [f'a red circle number {i}' for i in range(10)]
        tiny_guard.check(prompts[:1])
        t0 = time.perf_counter()
        tiny_guard.check(prompts)
        per = (time.perf_counter() - t0) / len(prompts)
    finally:
        torch.set_num_threads(threads)
    n = len(tiny_guard.tokenizer(classifier.llama_guard_prompt(prompts[0]))['input_ids'])
    print(f'\ntiny guard model: {per * 1e3:.1f} ms per prompt, {n} template tokens (1 thread)')
    assert per < 2.0


def test_guard_errors(tmp_path):
    with pytest.raises(ValueError, match='no config.json'):
        classifier.GuardModelClassifier(tmp_path)
