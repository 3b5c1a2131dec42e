"""Output checks: frame sampling, refusal naming the category (and nothing written by the
CLI's path: OutputRefused is a PromptRefused), a transformers image classifier (a tiny random
ViT built here, its head steered both ways) and NudeNet's shipped detector on benign frames."""

import os

import numpy as np
import pytest

from sora_jax.safety import moderation, output_check
from sora_jax.safety.output_check import FrameVerdict


def test_sample_indices():
    assert output_check.sample_indices(16, 4) == [0, 5, 10, 15]
    assert output_check.sample_indices(1, 4) == [0]
    assert output_check.sample_indices(3, 8) == [0, 1, 2]
    with pytest.raises(ValueError, match='must be >= 1'):
        output_check.sample_indices(0, 4)


class _Bright:
    """Refuses frames whose mean is above 200 (a stand-in detector)."""

    name = 'bright'

    def __init__(self):
        self.seen = 0

    def check(self, images):
        self.seen += len(images)
        return [
            FrameVerdict(False, 'sexual_content', 'BRIGHT', float(im.mean()) / 255)
            if im.mean() > 200
            else FrameVerdict(True)
            for im in images
        ]


def test_enforce_names_category_and_clip():
    frames = np.zeros((3, 16, 8, 8, 3), np.uint8)
    frames[2, 10] = 255  # clip 2, frame 10 (a sampled one)
    frames[1, 3] = 255  # clip 1, frame 3: not sampled (0, 5, 10, 15)
    det = _Bright()
    with pytest.raises(output_check.OutputRefused, match="'sexual_content', clip 2 frame 10") as e:
        output_check.enforce(frames, det)
    assert isinstance(e.value, moderation.PromptRefused)  # sample.py: exit 3, nothing written
    assert det.seen == 12  # 4 frames of each of 3 clips
    ok = output_check.enforce(frames[:2], det)
    assert [v.allowed for v in ok] == [True, True] and ok[0].frames == (0, 5, 10, 15)
    assert output_check.enforce(frames, None) == []  # no detector configured
    with pytest.raises(ValueError, match='uint8 frames'):
        output_check.check_videos(frames.astype(np.float32), det)


@pytest.fixture(scope='module')
def tiny_vit(tmp_path_factory):
    pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    d = str(tmp_path_factory.mktemp('tiny_nsfw_vit'))
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label={0: 'normal', 1: 'nsfw'},
        label2id={'normal': 0, 'nsfw': 1},
    )
    transformers.ViTForImageClassification(cfg).save_pretrained(d)
    transformers.ViTImageProcessor(size={'height': 32, 'width': 32}).save_pretrained(d)
    return output_check.ImageClassifierFolder(d)


def _steer(clf, nsfw: bool):
    torch = clf.torch
    with torch.no_grad():
        clf.model.classifier.weight.zero_()
        clf.model.classifier.bias.copy_(torch.tensor([0.0, 4.0] if nsfw else [4.0, 0.0]))


def test_image_classifier_folder(tiny_vit):
    frames = np.random.default_rng(0).integers(0, 255, (2, 8, 16, 16, 3), dtype=np.uint8)
    _steer(tiny_vit, nsfw=True)
    with pytest.raises(output_check.OutputRefused, match="'sexual_content', clip 0") as e:
        output_check.enforce(frames, tiny_vit)
    assert e.value.label == 'nsfw' and e.value.score == pytest.approx(np.exp(4) / (1 + np.exp(4)))
    _steer(tiny_vit, nsfw=False)
    vs = output_check.enforce(frames, tiny_vit)
    assert all(v.allowed for v in vs) and vs[0].verdicts[0].score < 0.02


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match='no config.json'):
        output_check.ImageClassifierFolder(tmp_path)
    assert output_check.configured('off') is None


def test_nudenet_on_benign_frames():
    """NudeNet's shipped weights (optional extra) pass a shapes-like clip and a photo of a
    clothed person (matplotlib's sample photo, when matplotlib is installed)."""
    pytest.importorskip('nudenet')
    det = output_check.NudeNetDetector()
    clip = np.zeros((8, 32, 32, 3), np.uint8)
    clip[:, 8:24, 8:24] = (230, 30, 30)  # a red square
    clips = [clip]
    try:
        import matplotlib
        from PIL import Image

        photo = os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')
        img = np.asarray(Image.open(photo).convert('RGB').resize((128, 150)))[:128]
        clips.append(np.stack([img] * 8))
    except ImportError:
        pass
    for c in clips:
        (v,) = output_check.enforce(c[None], det)
        assert v.allowed and len(v.verdicts) == 4


def test_pipeline_checks_outputs(tmp_path, monkeypatch):
    """TextToVideo's finish stage runs the configured output check: a classifier that calls
    everything 'nsfw' refuses the call (nothing returned, so nothing written); with
    moderation=False the check is off."""
    pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    from configs import shapes as shapes_cfg
    from sora_jax.pipeline import TextToVideo

    d = str(tmp_path / 'always_nsfw')
    cfg = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
        id2label={0: 'normal', 1: 'nsfw'},
        label2id={'normal': 0, 'nsfw': 1},
    )
    vit = transformers.ViTForImageClassification(cfg)
    vit.classifier.weight.data.zero_()
    vit.classifier.bias.data[:] = vit.classifier.bias.data.new_tensor([0.0, 4.0])
    vit.save_pretrained(d)
    transformers.ViTImageProcessor(size={'height': 32, 'width': 32}).save_pretrained(d)
    monkeypatch.setenv(output_check.OUTPUT_CHECK_ENV, d)
    tiny = shapes_cfg.get_config('tiny')
    tiny.sample.height = tiny.sample.width = 32
    pipe = TextToVideo.from_config(tiny)
    with pytest.raises(output_check.OutputRefused, match="'sexual_content', clip 0"):
        pipe('a red circle', num_inference_steps=1, progress=False)
    frames = pipe('a red circle', num_inference_steps=1, progress=False, moderation=False)
    assert frames.dtype == np.uint8 and frames.shape[0] == 1
