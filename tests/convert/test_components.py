"""sora_jax/convert/wan.py's component names: every convertible component is named once, in
COMPONENTS (converted by default) or OPTIONAL_COMPONENTS (converted when the folder has it), and
the error for an unknown one lists them all."""

import pytest

from sora_jax.convert import wan


def test_every_converter_is_a_named_component():
    named = wan.COMPONENTS + wan.OPTIONAL_COMPONENTS
    assert len(set(named)) == len(named)
    assert sorted(named) == sorted(wan.CONVERTERS)


def test_unknown_component_error_lists_every_component():
    with pytest.raises(ValueError, match='is not convertible') as err:
        wan.component_spec('image_encoderr', {})
    for name in wan.CONVERTERS:
        assert repr(name) in str(err.value), (name, str(err.value))


def test_convert_folder_rejects_an_unknown_component(tmp_path):
    with pytest.raises(ValueError, match="component 'clip' is not convertible") as err:
        wan.convert_folder(str(tmp_path), str(tmp_path / 'out'), ['clip'])
    assert "'image_encoder'" in str(err.value)
