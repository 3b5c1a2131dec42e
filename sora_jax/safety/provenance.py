"""Content Credentials (C2PA) for every file the CLI writes, and the hashes they carry.

    info = manifest_info(checkpoint='checkpoints/shapes', config_name='dit_p3', ...)
    sign(path, info)                      # embeds a signed manifest in the .mp4 / .gif / .png
    report = read(path)                   # {'valid': ..., 'errors': [...], 'signer': ..., ...}

The manifest holds a `c2pa.created` action with the IPTC `trainedAlgorithmicMedia` digital
source type and the generator (sora_jax and its version), plus an `org.sora_jax.generation`
assertion: checkpoint hash and config name, the hash of the checkpoint's training-data record,
the watermark payload, and every safeguard the user turned off.

Signing credentials: `--c2pa_cert` / `--c2pa_key` (or $SORA_JAX_C2PA_CERT / $SORA_JAX_C2PA_KEY):
a PEM chain (end-entity ES256 certificate first, then its issuer) and its PKCS#8 EC key. Without
them a development CA and signer are created once under ~/.config/sora_jax/c2pa_dev (or
$XDG_CONFIG_HOME) and the CLI says the credentials are for development only: they prove the
file was not altered since signing, not who signed it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile

from absl import logging

CERT_ENV, KEY_ENV = 'SORA_JAX_C2PA_CERT', 'SORA_JAX_C2PA_KEY'
TRAINED = 'http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia'
GENERATOR = 'sora_jax'
ASSERTION = 'org.sora_jax.generation'
_MIME = {
    '.mp4': 'video/mp4',
    '.gif': 'image/gif',
    '.png': 'image/png',
    '.jpg': 'image/jpeg',
    '.jpeg': 'image/jpeg',
    '.webm': None,
}


def version() -> str:
    try:
        from importlib.metadata import version as v

        return v('sora_jax')
    except Exception:  # noqa: BLE001 - not installed (a source checkout)
        return '0.1.0'


# ---------------------------------------------------------------- hashes
def file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


# Not weights: a training run's workdir lock (io/lock.py), a bundle's model card and the marker
# export writes (sora_jax/export.py).
_SKIP = ('.sora_jax.lock', 'MODEL_CARD.md', '.sora_jax_bundle.json')


def _tree_hash(h, path: str, prefix: str = '') -> None:
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            if f == 'data_record.json' or f.endswith('.tmp') or f in _SKIP:
                continue  # the record is hashed on its own
            rel = prefix + os.path.relpath(p, path)
            h.update(rel.encode() + b'\0' + bytes.fromhex(file_hash(p)))


def autoencoder_dir(path: str) -> str | None:
    """The VAE directory a checkpoint's config names (`autoencoder`), resolved as sampling
    resolves it (relative to the checkpoint first, then to the working directory), when it
    lies outside `path`; None when it is inside (already hashed with it) or there is none."""
    cdir = os.path.join(path, 'checkpoints')
    steps = sorted((int(d) for d in os.listdir(cdir) if d.isdigit()) if os.path.isdir(cdir) else [])
    meta = os.path.join(cdir, str(steps[-1]), 'config', 'metadata') if steps else ''
    try:
        with open(meta, encoding='utf-8') as f:
            ae = json.load(f).get('autoencoder')
    except (OSError, ValueError, AttributeError):
        return None
    if not ae or ae == 'none' or '://' in str(ae):
        return None
    ae = str(ae)
    cands = [ae] if os.path.isabs(ae) else [os.path.join(path, ae), ae]
    found = next((c for c in cands if os.path.isdir(c)), None)
    if found is None:
        return None
    found, root = os.path.realpath(found), os.path.realpath(path)
    return None if os.path.commonpath([found, root]) == root else found


def checkpoint_hash(path: str) -> str:
    """sha256 over every weight file that samples from checkpoint `path`: each file of the
    directory (relative path and bytes, sorted), and when its config's `autoencoder` lies
    outside it (a training workdir naming its VAE run, a bundle pointing elsewhere), each file
    of that VAE directory too, under `autoencoder/`: changing that VAE changes the hash."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f'checkpoint {path!r} is not a directory; pass a workdir or bundle.')
    h = hashlib.sha256()
    _tree_hash(h, path)
    vae = autoencoder_dir(path)
    if vae is not None:
        _tree_hash(h, vae, prefix='autoencoder/')
    return h.hexdigest()


def lora_entries(loras) -> list[dict]:
    """[(file, scale), ...] -> [{'file': basename, 'sha256', 'scale'}] for the manifest."""
    return [
        {'file': os.path.basename(os.fspath(p)), 'sha256': file_hash(os.fspath(p)), 'scale': s}
        for p, s in loras
    ]


def weights_hash(checkpoint_sha256: str, loras: list[dict]) -> str:
    """The hash a manifest cites for the weights that made a file: the checkpoint's hash alone
    without LoRAs; with them, sha256 over it and each LoRA's sha256 and scale, in order."""
    if not loras:
        return checkpoint_sha256
    h = hashlib.sha256(checkpoint_sha256.encode())
    for e in loras:
        h.update(f'\0{e["sha256"]}:{float(e["scale"])!r}'.encode())
    return h.hexdigest()


# ---------------------------------------------------------------- credentials
def config_dir() -> str:
    base = os.environ.get('XDG_CONFIG_HOME') or os.path.join(os.path.expanduser('~'), '.config')
    return os.path.join(base, 'sora_jax')


def _private_dir(d: str) -> None:
    """Creates `d` and any missing parents as 0700 (chmod after mkdir: the umask cannot loosen
    them); `d` itself is made 0700 even when it exists."""
    d = os.path.abspath(d)
    missing = []
    while not os.path.isdir(d):
        missing.append(d)
        d = os.path.dirname(d)
    for m in reversed(missing):
        os.makedirs(m, mode=0o700, exist_ok=True)
        os.chmod(m, 0o700)
    os.chmod(missing[0] if missing else d, 0o700)


def dev_credentials(directory: str | None = None) -> tuple[str, str]:
    """(chain.pem, signer.key) of the development CA + signer, created on first use."""
    d = directory or os.path.join(config_dir(), 'c2pa_dev')
    chain, key = os.path.join(d, 'chain.pem'), os.path.join(d, 'signer.key')
    if os.path.isfile(chain) and os.path.isfile(key):
        if directory is None:  # ours: tighten what an earlier, looser umask left
            os.chmod(d, 0o700)
        return chain, key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = lambda cn: x509.Name(
        [
            x509.NameAttribute(
                NameOID.ORGANIZATION_NAME,  # noqa: E731
                'sora_jax development (not trusted)',
            ),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name('sora_jax dev CA'))
        .issuer_name(name('sora_jax dev CA'))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key_obj = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name('sora_jax dev signer'))
        .issuer_name(ca.subject)
        .public_key(key_obj.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key_obj.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _private_dir(d)
    pem = serialization.Encoding.PEM
    fd = os.open(chain, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o644)  # public certificates, but writable by the owner only, any umask
    with os.fdopen(fd, 'wb') as f:
        f.write(leaf.public_bytes(pem) + ca.public_bytes(pem))
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, 'wb') as f:
        f.write(
            key_obj.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    logging.info('Created a development C2PA CA and signer in %s', d)
    return chain, key


def credentials(cert: str | None = None, key: str | None = None) -> tuple[str, str, bool]:
    """(chain path, key path, development?) from the arguments, the environment, or the dev CA."""
    cert = cert or os.environ.get(CERT_ENV)
    key = key or os.environ.get(KEY_ENV)
    if bool(cert) != bool(key):
        raise ValueError(
            f'C2PA signing needs both a certificate chain and its key; got cert={cert!r}'
            f', key={key!r}. Pass --c2pa_cert and --c2pa_key (or ${CERT_ENV} and '
            f'${KEY_ENV}), or neither for development credentials.'
        )
    if cert:
        for p in (cert, key):
            if not os.path.isfile(p):
                raise ValueError(f'C2PA credential file {p!r} does not exist.')
        return cert, key, False
    chain, k = dev_credentials()
    return chain, k, True


# ---------------------------------------------------------------- manifest
def manifest_info(
    *,
    checkpoint_hash: str | None,
    config_name: str | None,
    data_record_hash: str | None,
    watermark_payload: dict | None,
    disabled: list[str],
    prompt_moderated: bool,
    title: str = 'sora_jax output',
    loras: list[dict] | None = None,
    autoencoder: str | None = None,
    consent: list[dict] | None = None,
) -> dict:
    """The facts a manifest records (JSON-serialisable). With `loras` (`lora_entries`), the
    cited `checkpoint_sha256` covers them (`weights_hash`) and the base checkpoint's own hash
    is kept as `base_checkpoint_sha256`; `autoencoder`: a VAE directory outside the
    checkpoint that the hash covers (`autoencoder_dir`), recorded by name. `consent`: the
    consent registry entries (sora_jax/safety/consent.py) that allowed the real people the
    prompt names, recorded as given."""
    info = {
        'title': title,
        'checkpoint_sha256': weights_hash(checkpoint_hash, loras) if loras else checkpoint_hash,
        'config': config_name,
        'data_record_sha256': data_record_hash,
        'watermark': watermark_payload,
        'safeguards_disabled': sorted(disabled),
        'prompt_moderated': prompt_moderated,
    }
    if loras:
        info.update(base_checkpoint_sha256=checkpoint_hash, loras=loras)
    if autoencoder:
        info['autoencoder'] = autoencoder
    if consent:
        info['consent'] = [dict(e) for e in consent]
    return info


def _definition(info: dict, fmt: str) -> dict:
    return {
        'claim_generator_info': [{'name': GENERATOR, 'version': version()}],
        'title': info.get('title', 'sora_jax output'),
        'format': fmt,
        'assertions': [
            {
                'label': 'c2pa.actions',
                'data': {
                    'actions': [
                        {
                            'action': 'c2pa.created',
                            'digitalSourceType': TRAINED,
                            'softwareAgent': {'name': GENERATOR, 'version': version()},
                        }
                    ]
                },
            },
            {'label': ASSERTION, 'data': {k: v for k, v in info.items() if k != 'title'}},
        ],
    }


def sign(path: str, info: dict, cert: str | None = None, key: str | None = None) -> bool:
    """Embeds a signed manifest in `path` (in place). Returns True when dev credentials signed."""
    import c2pa

    ext = os.path.splitext(path)[1].lower()
    fmt = _MIME.get(ext)
    if fmt is None:
        raise ValueError(
            f'cannot sign {path!r}: C2PA here supports {sorted(k for k, v in _MIME.items() if v)}'
            '; write .mp4, .gif or .png, or pass --nocredentials.'
        )
    chain, keyfile, dev = credentials(cert, key)
    with open(chain, 'rb') as f:
        chain_pem = f.read()
    with open(keyfile, 'rb') as f:
        key_pem = f.read()
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(alg=b'es256', sign_cert=chain_pem, private_key=key_pem, ta_url=None)
    )
    builder = c2pa.Builder(json.dumps(_definition(info, fmt)))
    d = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(path)))
    try:
        tmp = os.path.join(d, 'signed' + ext)
        try:
            builder.sign_file(path, tmp, signer)
        except Exception as e:  # c2pa.C2paError and friends
            raise ValueError(
                f'C2PA signing of {path!r} failed: {e}. The certificate must be an '
                'end-entity ES256 certificate (digitalSignature, an EKU such as '
                'emailProtection) followed by its CA in the chain.'
            ) from e
        os.replace(tmp, path)
    finally:
        shutil.rmtree(d, ignore_errors=True)
        for obj in (builder, signer):
            try:
                obj.close()
            except Exception:  # noqa: BLE001
                pass
    return dev


def _has_manifest_bytes(path: str) -> bool:
    """Whether the file holds a C2PA manifest store's JUMBF labels ('jumb' box, 'c2pa' label):
    a file c2pa cannot parse is "no manifest" without them, a broken manifest with them."""
    import mmap

    try:
        with open(path, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(b'jumb') >= 0 and m.find(b'c2pa') >= 0
    except (OSError, ValueError):  # empty file (mmap of 0 bytes), unreadable
        return False


def read(path: str) -> dict:
    """{'present', 'valid', 'trusted', 'state', 'errors', 'signer', 'generator', 'actions',
    'generation'}: valid = the manifest and the file it signs are intact (c2pa state 'Valid');
    trusted = the signer chains to a trust list c2pa knows (never for the development CA)."""
    import c2pa

    out = {
        'present': False,
        'valid': False,
        'trusted': False,
        'state': None,
        'errors': [],
        'signer': None,
        'generator': None,
        'actions': [],
        'generation': None,
    }
    try:
        reader = c2pa.Reader(path)
    except Exception as e:  # noqa: BLE001 - no manifest, or one too broken to parse
        msg = str(e)
        if 'ManifestNotFound' in msg or 'no JUMBF' in msg.lower() or 'not found' in msg.lower():
            return out
        if not _has_manifest_bytes(path):  # not a media file c2pa parses, and no manifest in it
            out['errors'] = [f'no manifest (the file does not parse as its format: {msg})']
            return out
        out.update(present=True, errors=[msg])
        return out
    try:
        store = json.loads(reader.json())
        out['present'] = True
        out['state'] = reader.get_validation_state()
        status = store.get('validation_status') or []
        results = store.get('validation_results') or {}
        active = (results.get('activeManifest') or {}) if isinstance(results, dict) else {}
        failures = list(active.get('failure', []))
        out['errors'] = [
            f'{s.get("code")}: {s.get("explanation", "")}'
            for s in status + failures
            if s.get('code') and s not in active.get('success', [])
        ]
        out['errors'] = sorted(set(out['errors']))
        untrusted = [e for e in out['errors'] if e.startswith('signingCredential.untrusted')]
        out['errors'] = [e for e in out['errors'] if e not in untrusted]  # a trust question,
        out['trusted'] = out['state'] == 'Trusted'  # not tampering
        m = store.get('manifests', {}).get(store.get('active_manifest'), {})
        sig = m.get('signature_info') or {}
        out['signer'] = {
            'issuer': sig.get('issuer'),
            'common_name': sig.get('common_name'),
            'time': sig.get('time'),
            'alg': sig.get('alg'),
        }
        gi = m.get('claim_generator_info') or [{}]
        out['generator'] = f'{gi[0].get("name")} {gi[0].get("version")}'
        for a in m.get('assertions', []):
            if a.get('label', '').startswith('c2pa.actions'):
                out['actions'] = [
                    (x.get('action'), x.get('digitalSourceType'))
                    for x in a.get('data', {}).get('actions', [])
                ]
            if a.get('label') == ASSERTION:
                out['generation'] = a.get('data')
        out['valid'] = not out['errors'] and out['state'] in ('Valid', 'Trusted')
    finally:
        reader.close()
    return out
