"""ViCLIP: parity with the original (VBench's third_party/ViCLIP), checkpoint layout, files, tokenizer, inputs.

The golden scores in ``tests/fixtures/viclip_tiny`` come from the original code on seeded random tiny weights
(``scripts/viclip_golden.py``, run in a separate venv: VBench's setup refuses a CPU torch).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from reward_models import make_reward, spec
from reward_models import viclip as vc
from reward_models.viclip_model import ViCLIP, ViCLIPConfig, check_state_dict, make_config, read_checkpoint
from reward_models.viclip_tokenizer import BPETokenizer, find_bpe_file
from reward_models.weights import MissingWeightsError

torch.set_num_threads(1)

FIXTURE = Path(__file__).parent / "fixtures" / "viclip_tiny"
GOLDEN = json.loads((FIXTURE / "golden.json").read_text())
VIDEOS = dict(np.load(FIXTURE / "videos.npz"))
CONFIG = GOLDEN["config"]
CKPT = FIXTURE / vc.CHECKPOINT_FILE


def video(name: str) -> np.ndarray:
    """``[T, H, W, 3]`` float32 in [0, 1]: the uint8 video the original scored."""
    return VIDEOS[f"video/{name}"].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def reward_fn():
    return make_reward("viclip", path=FIXTURE, tokenizer_path=FIXTURE, config=CONFIG, device="cpu")


def _quiet(fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the long prompt warns (tested below)
        return fn(*args)


# ------------------------------------------------------------------------------------------------ parity


def test_golden_scores_match_original(reward_fn):
    """Every case scored one by one (videos of different shapes) equals the original's to 1e-5."""
    got = np.array([_quiet(reward_fn, video(c["video"])[None], [c["prompt"]])[0] for c in GOLDEN["cases"]])
    want = np.array([c["score"] for c in GOLDEN["cases"]], dtype=np.float32)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)  # measured: ~2e-7
    assert want.max() - want.min() > 0.3  # the comparison means something


def test_batched_through_jax_matches(reward_fn):
    """Same-shaped videos in one batch through the DLPack bridge give the same scores."""
    cases = [c for c in GOLDEN["cases"] if c["video"].startswith("t8_28")]
    videos = jnp.asarray(np.stack([video(c["video"]) for c in cases]))
    got = _quiet(reward_fn, videos, [c["prompt"] for c in cases])
    assert got.dtype == np.float32 and got.shape == (len(cases),)
    np.testing.assert_allclose(got, [c["score"] for c in cases], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(GOLDEN["frame_indices"]))
def test_preprocessed_frames_equal_original(name):
    vid = torch.from_numpy(video(name))[None]
    got = vc.preprocess(vid, image_size=CONFIG["image_size"], num_frames=8, mean=vc.CLIP_MEAN, std=vc.CLIP_STD)
    assert tuple(got.shape) == (1, 3, 8, CONFIG["image_size"], CONFIG["image_size"])
    np.testing.assert_allclose(got[0].transpose(0, 1).numpy(), VIDEOS[f"frames/{name}"], atol=1e-6, rtol=0)
    assert vc.frame_indices(VIDEOS[f"video/{name}"].shape[0]) == GOLDEN["frame_indices"][name]


@pytest.mark.parametrize("name", ["ms_16x256", "ms_16x256x320"])
def test_released_size_frames_equal_original(name):
    """16 x 256 x 256 (ModelScope's size) and 16 x 256 x 320 videos at the released 224: the original's
    Resize(224, BICUBIC, antialias=False) + CenterCrop, exactly (checked on the 8-bit levels)."""
    vid = torch.from_numpy(video(name))[None]
    got = vc.preprocess(vid, image_size=224, num_frames=8, mean=vc.CLIP_MEAN, std=vc.CLIP_STD)[0]  # [3, 8, S, S]
    levels = (
        got.transpose(0, 1) * torch.tensor(vc.CLIP_STD).view(1, 3, 1, 1) + torch.tensor(vc.CLIP_MEAN).view(1, 3, 1, 1)
    ) * 255
    kept = levels[GOLDEN["frames224_kept"]].numpy()
    want = VIDEOS[f"frames224_uint8/{name}"].astype(np.float32)
    assert kept.shape == want.shape
    np.testing.assert_allclose(kept, want, atol=1e-3, rtol=0)


def test_frame_indices_vbench_middle():
    assert vc.frame_indices(16) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert vc.frame_indices(8) == list(range(8))
    assert vc.frame_indices(5) == [0, 1, 2, 3, 4, 4, 4, 4]
    assert vc.frame_indices(24) == [1, 4, 7, 10, 13, 16, 19, 22]
    with pytest.raises(ValueError, match="at least one frame"):
        vc.frame_indices(0)


def test_tokens_match_original():
    tok = BPETokenizer(FIXTURE / "bpe_simple_vocab_16e6.txt.gz")
    assert tok.vocab_size == CONFIG["vocab_size"] and tok.eot == tok.vocab_size - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for c in GOLDEN["cases"]:
            assert tok([c["prompt"]], CONFIG["context_length"])[0].tolist() == c["input_ids"], c["prompt"]
    long = [c for c in GOLDEN["cases"] if c["input_ids"][-1] != 0]
    assert long and all(c["input_ids"][-1] == tok.eot for c in long)  # truncated: last token forced to EOT
    assert any("truncated to 32" in str(w.message) for w in caught)


def test_options_scale_and_normalization(reward_fn):
    c = GOLDEN["cases"][1]
    x = video(c["video"])[None]
    base = reward_fn(x, [c["prompt"]])
    logits = make_reward("viclip", path=CKPT, tokenizer_path=FIXTURE, config=CONFIG, device="cpu", scale=100.0)
    np.testing.assert_allclose(logits(x, [c["prompt"]]), 100.0 * base, rtol=1e-5)
    imagenet = make_reward(
        "viclip", path=FIXTURE, tokenizer_path=FIXTURE, config=CONFIG, device="cpu", normalization="imagenet"
    )
    assert abs(float(imagenet(x, [c["prompt"]])[0] - base[0])) > 1e-4  # a different input normalisation
    half = make_reward("viclip", path=FIXTURE, tokenizer_path=FIXTURE, config=CONFIG, device="cpu", dtype="bfloat16")
    np.testing.assert_allclose(half(x, [c["prompt"]]), base, atol=0.05)


# ------------------------------------------------------------------------------------- checkpoint layout


def test_released_key_set_is_exactly_the_models():
    """The full-size model's state dict (names and shapes) equals the original's (427.6 M parameters)."""
    released = {k: tuple(v) for k, v in json.loads((FIXTURE / "released_keys.json").read_text()).items()}
    with torch.device("meta"):
        model = ViCLIP(ViCLIPConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == released
    assert sum(p.numel() for p in model.parameters()) == GOLDEN["released_parameters"]
    assert abs(GOLDEN["released_parameters"] / 1e6 - 427.6) < 0.05
    check_state_dict({k: torch.empty(v, device="meta") for k, v in released.items()}, ours)  # accepted


def test_strict_loading_names_what_does_not_fit():
    state = read_checkpoint(CKPT)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ViCLIP(make_config(CONFIG)).state_dict().items()}
    check_state_dict(state, expected)
    bad = dict(state)
    bad.pop("vision_encoder.temporal_positional_embedding")
    bad["vision_encoder.extra"] = torch.zeros(1)
    bad["text_encoder.text_projection"] = torch.zeros(3, 3)
    with pytest.raises(ValueError) as err:
        check_state_dict(bad, expected)
    msg = str(err.value)
    assert "1 unexpected entry: vision_encoder.extra" in msg
    assert "missing weight(s): vision_encoder.temporal_positional_embedding" in msg
    assert "text_encoder.text_projection: checkpoint (3, 3)" in msg


def test_default_config_against_tiny_checkpoint_says_why():
    with pytest.raises(ValueError, match="vocab_size 49408"):
        make_reward("viclip", path=CKPT, tokenizer_path=FIXTURE, device="cpu")
    with pytest.raises(ValueError, match="shape mismatch"):
        make_reward("viclip", path=CKPT, tokenizer_path=FIXTURE, device="cpu", config={"vocab_size": 595})


def test_corrupt_or_foreign_checkpoints_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read the ViCLIP checkpoint"):
        read_checkpoint(tmp_path / "junk.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r'expected \{"model": state_dict\}'):
        read_checkpoint(tmp_path / "other.pth")
    torch.save({"model": {"a": 1}}, tmp_path / "notensor.pth")
    with pytest.raises(ValueError, match="not a state dict of tensors"):
        read_checkpoint(tmp_path / "notensor.pth")


def test_missing_files_errors(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MissingWeightsError, match=r"ViClip-InternVid-10M-FLT.pth .*huggingface.co/OpenGVLab/ViCLIP"):
        vc.resolve_checkpoint(None)
    with pytest.raises(MissingWeightsError, match="looked at"):
        vc.resolve_checkpoint(tmp_path)
    assert vc.resolve_checkpoint(FIXTURE) == CKPT and vc.resolve_checkpoint(CKPT) == CKPT
    with pytest.raises(FileNotFoundError, match="open_clip_torch"):
        find_bpe_file(tmp_path)
    assert find_bpe_file(FIXTURE).name == "bpe_simple_vocab_16e6.txt.gz"


def test_config_and_option_errors():
    with pytest.raises(ValueError, match="unknown ViCLIPConfig"):
        make_config({"width": 3})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViCLIPConfig(image_size=30, patch_size=7)
    with pytest.raises(ValueError, match="normalization"):
        vc.load_viclip(CKPT, tokenizer_path=FIXTURE, config=CONFIG, device="cpu", normalization="lab")
    with pytest.raises(ValueError, match="dtype"):
        vc.load_viclip(CKPT, tokenizer_path=FIXTURE, config=CONFIG, device="cpu", dtype="int8")


# ------------------------------------------------------------------------------------------------ inputs


def test_registered_as_video_reward():
    s = spec("viclip")
    assert s.video and "ViClip-InternVid-10M-FLT.pth" in s.weights


def test_bad_inputs(reward_fn):
    x = video("t8_28")
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        reward_fn(x, ["a"])  # one video without the batch axis
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        reward_fn(np.stack([x, x]), ["a"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reward_fn(x[None] * 2.0, ["a"])
