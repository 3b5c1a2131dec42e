"""The commands in README.md, docs/*.md and the model card parse.

Every `experiments/X.py` a page names exists and accepts each `--flag` it is given (the flags its
`--helpfull` lists, run once per script); every `--config=FILE.py:ARG` loads and every
`--config.KEY=...` names a key of that config (of any config the page names when the command
gives none); every `make X` is a Makefile target; every repository path in a code span and every
relative link exists. Nothing is run beyond `--helpfull`, so a command can still fail at run time
for other reasons, but not for a renamed script, flag, config key or file.
"""

import glob
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = sorted(
    p
    for p in [
        os.path.join(ROOT, 'README.md'),
        os.path.join(ROOT, 'checkpoints/shapes/MODEL_CARD.md'),
    ]
    + glob.glob(os.path.join(ROOT, 'docs', '*.md'))
    if os.path.isfile(p)
)
SCRIPT = re.compile(r'experiments/(\w+)\.py')
MAKE = re.compile(r'(?:^|[;&|]\s*)make\s+([a-z][\w-]*)')
# Repository paths worth checking (checkpoints/ other than the shipped bundle are the user's).
PATH = re.compile(
    r'(?<![\w/.~$-])((?:sora_jax|tests|configs|experiments|colabs|docs)/[\w./*{},-]*\w)'
)
LINK = re.compile(r'\]\(([^)\s]+)\)')
HELP_FLAG = re.compile(r'^\s+(?:-\S+,)?--(\[no\])?([\w.]+):', re.M)


def _page(path: str) -> str:
    with open(path, encoding='utf-8') as f:
        return f.read()


def _code(text: str) -> list[str]:
    """Code of a page, one command a string: fenced blocks line by line (a trailing backslash
    joins lines; `#` comments dropped) and inline `code` spans."""
    out = []
    fenced = re.findall(r'^```[^\n]*\n(.*?)^```', text, re.M | re.S)
    for block in fenced:
        for line in block.replace('\\\n', ' ').splitlines():
            out.append(re.sub(r'(^|\s)#.*$', '', line))
    prose = re.sub(r'^```[^\n]*\n.*?^```', '', text, flags=re.M | re.S)
    out += re.findall(r'`([^`\n]+)`', prose)
    return out


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, argument tokens) for every `experiments/X.py ...` in the page's code."""
    out = []
    for code in _code(text):
        hits = list(SCRIPT.finditer(code))
        for i, m in enumerate(hits):
            end = hits[i + 1].start() if i + 1 < len(hits) else len(code)
            rest = re.split(r'\s(?:\||&&|;|>)\s', code[m.end() : end])[0]
            try:
                tokens = shlex.split(rest)
            except ValueError:  # an unbalanced quote in a shortened command
                tokens = rest.split()
            out.append((m.group(1), [t.strip('[]') for t in tokens]))
    return out


def _all_commands():
    return [
        (os.path.relpath(p, ROOT), script, args)
        for p in PAGES
        for script, args in _commands(_page(p))
    ]


@pytest.fixture(scope='module')
def script_flags():
    """Script name -> the flag names its --helpfull lists (all modules' flags; `noX` for bools),
    or [the last line of its output] when it fails before printing them."""
    names = sorted({s for _, s, _ in _all_commands()})
    names = [n for n in names if os.path.isfile(os.path.join(ROOT, 'experiments', f'{n}.py'))]
    env = dict(os.environ, JAX_PLATFORMS='cpu')

    def helpfull(name):
        r = subprocess.run(
            [sys.executable, f'experiments/{name}.py', '--helpfull'],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        flags = set()
        for no, flag in HELP_FLAG.findall(r.stdout + r.stderr):
            flags.add(flag)
            if no:
                flags.add('no' + flag)
        if 'helpfull' not in flags:  # the script failed before absl printed its help
            return name, (r.stdout + r.stderr).strip().splitlines()[-1:] or ['no output']
        return name, flags

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(helpfull, names))


def test_pages_name_commands():
    """The extraction finds the commands the README must show (guards the regexes above)."""
    scripts = {s for page, s, _ in _all_commands() if page == 'README.md'}
    for s in ('sample', 'train', 'convert_wan', 'export_lora', 'aot', 'evaluate'):
        assert s in scripts, f'README.md shows no experiments/{s}.py command'


def test_scripts_accept_their_flags(script_flags, load_config):
    bad = []
    configs = {}

    def config(spec):
        if spec not in configs:
            try:
                configs[spec] = load_config(spec)
            except Exception as e:  # noqa: BLE001 - reported below with the page
                configs[spec] = e
        return configs[spec]

    for page in PAGES:
        rel = os.path.relpath(page, ROOT)
        commands = _commands(_page(page))
        named = {
            a.split('=', 1)[1]
            for _, args in commands
            for a in args
            if a.startswith('--config=') and '.py:' in a
        }
        for script, args in commands:
            if script not in script_flags:
                bad.append(f'{rel}: experiments/{script}.py does not exist')
                continue
            accepted = script_flags[script]
            if isinstance(accepted, list):
                bad.append(f'{rel}: experiments/{script}.py --helpfull failed: {accepted[0]}')
                continue
            own = [a.split('=', 1)[1] for a in args if a.startswith('--config=')]
            for a in args:
                if not a.startswith('--') or a == '--':
                    continue
                flag = a[2:].split('=', 1)[0]
                if flag.startswith('config.'):
                    key = flag[len('config.') :]
                    specs = own or sorted(named)
                    if 'config' not in accepted:
                        bad.append(f'{rel}: {script}.py takes no --config (--{flag})')
                    elif not any(_has_key(config(s), key) for s in specs):
                        bad.append(f'{rel}: {script}.py --{flag}: no such key in {specs}')
                elif flag not in accepted:
                    bad.append(f'{rel}: {script}.py does not accept --{flag}')
            for spec in own:
                if '.py:' in spec and isinstance(config(spec), Exception):
                    bad.append(f'{rel}: {script}.py --config={spec}: {config(spec)}')
    assert not bad, 'stale commands in the docs:\n' + '\n'.join(sorted(set(bad)))


def _has_key(c, key: str) -> bool:
    if isinstance(c, Exception):
        return False
    for part in key.split('.'):
        try:
            if part not in c:
                return False
            c = c[part]
        except TypeError:
            return False
    return True


def test_make_targets_exist():
    makefile = _page(os.path.join(ROOT, 'Makefile'))
    targets = set(re.findall(r'^([a-z][\w-]*)\s*:', makefile, re.M))
    bad = [
        f'{os.path.relpath(p, ROOT)}: make {t}'
        for p in PAGES
        for code in _code(_page(p))
        for t in MAKE.findall(code)
        if t not in targets
    ]
    assert not bad, 'make targets the Makefile lacks:\n' + '\n'.join(bad)


def _exists(path: str) -> bool:
    path = path.split('::')[0].rstrip('.,')
    if ':' in path:  # configs/shapes.py:dit
        path = path.split(':')[0]
    m = re.search(r'\{([^}]*)\}', path)
    if m:
        return all(
            _exists(path[: m.start()] + alt + path[m.end() :]) for alt in m.group(1).split(',')
        )
    return bool(glob.glob(os.path.join(ROOT, path)))


def test_paths_and_links_exist():
    bad = []
    for page in PAGES:
        rel = os.path.relpath(page, ROOT)
        text = _page(page)
        for code in _code(text):
            for path in PATH.findall(code):
                if not _exists(path):
                    bad.append(f'{rel}: {path}')
        for link in LINK.findall(text):
            if re.match(r'[a-z]+:|#', link):
                continue
            target = os.path.normpath(os.path.join(os.path.dirname(page), link.split('#')[0]))
            if not os.path.exists(target):
                bad.append(f'{rel}: link {link}')
    assert not bad, 'paths the pages name that do not exist:\n' + '\n'.join(bad)


def test_model_card_is_not_part_of_the_weights_hash(tmp_path):
    """The card beside the shipped weights changes neither the checkpoint hash the manifests cite
    nor, through it, the watermark's model id."""
    import shutil

    from sora_jax.safety import provenance

    bundle = os.path.join(ROOT, 'checkpoints', 'shapes')
    assert os.path.isfile(os.path.join(bundle, 'MODEL_CARD.md'))
    copy = tmp_path / 'shapes'
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns('MODEL_CARD.md'))
    assert provenance.checkpoint_hash(bundle) == provenance.checkpoint_hash(str(copy))
    (copy / 'extra.bin').write_bytes(b'x')  # any other file does count
    assert provenance.checkpoint_hash(bundle) != provenance.checkpoint_hash(str(copy))
