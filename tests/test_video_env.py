"""The video environment (ModelScope text-to-video) on a tiny random model, against diffusers' PyTorch pipeline.

A tiny ModelScope-shaped model (UNet3D + SD VAE + CLIP text encoder, torch weights) is written in diffusers'
layout; diffusers' ``TextToVideoSDPipeline`` with ``DDIMScheduler`` reads the same files as the oracle.
"""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from find_jax.envs import SamplerSettings, kind_of, load_model, make_environment  # noqa: E402
from find_jax.envs.loading import ModelLoadError  # noqa: E402
from find_jax.envs.video.testing import make_tiny_video_model  # noqa: E402

FRAMES = 3
PROMPTS = ["a video of a red cat running", "a blue dog"]
STEPS, GUIDANCE = 10, 9.0


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    return make_tiny_video_model(tmp_path_factory.mktemp("tiny_video"), seed=0)


@pytest.fixture(scope="module")
def video_model(video_dir):
    return load_model(video_dir)


@pytest.fixture(scope="module")
def env(video_model):
    return make_environment(video_model, SamplerSettings(steps=STEPS, guidance=GUIDANCE, num_frames=FRAMES), mesh=None)


def _latents(seed, p=2, n=1):
    return jax.random.normal(jax.random.PRNGKey(seed), (p, n, 4, FRAMES, 8, 8))


def _keys(p=2, seed=0):
    return jnp.stack([jax.random.PRNGKey(seed + i) for i in range(p)])


def test_kind_shapes_and_defaults(video_dir, video_model, env):
    assert kind_of(video_dir) == "video" and video_model.kind == "video"
    assert video_model.default_frames == 16 and video_model.default_size == (16, 16)
    assert video_model.latent_shape() == (4, 16, 8, 8)
    assert video_model.latent_shape(5, 32, 48) == (4, 5, 16, 24)
    assert env.kind == "video" and env.latent_shape == (4, FRAMES, 8, 8)
    assert env.source == str(video_dir) and len(env.fingerprint) == 16
    emb = env.prompt_embeddings(PROMPTS)
    assert emb.shape == (2, 32) and np.isfinite(emb).all()
    assert make_environment(video_model, SamplerSettings(steps=2), mesh=None).latent_shape == (4, 16, 8, 8)


def test_sampler_matches_diffusers_text_to_video_pipeline(video_dir, env):
    from diffusers import DDIMScheduler, TextToVideoSDPipeline

    pipe = TextToVideoSDPipeline.from_pretrained(str(video_dir), torch_dtype=torch.float32)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    pipe.set_progress_bar_config(disable=True)
    x = _latents(0)  # [P=2, N=1, 4, F, 8, 8]
    ours = np.asarray(env.bind(PROMPTS)(x, _keys()))[:, 0]  # [2, F, 16, 16, 3]
    with torch.no_grad():
        ref = pipe(
            PROMPTS,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            num_frames=FRAMES,
            height=16,
            width=16,
            eta=0.0,
            latents=torch.from_numpy(np.array(x[:, 0])),
            output_type="np",
        ).frames
    ref = np.asarray(ref)
    assert ours.shape == ref.shape == (2, FRAMES, 16, 16, 3) and ours.dtype == np.float32
    diff = np.abs(ours - ref).max()
    print(f"video sampler vs TextToVideoSDPipeline: max |diff| = {diff:.2e}")
    assert diff < 1e-3
    assert ref.std() > 1e-3  # the frames are not flat: the comparison means something
    assert np.abs(ref[:, 0] - ref[:, -1]).max() > 1e-4  # frames differ from each other


def test_no_recompile_and_latent_checks(env):
    env_fn = env.bind(PROMPTS)
    a = np.asarray(env_fn(_latents(0), _keys()))
    before = env.sample_fn._cache_size()
    b = np.asarray(env_fn(_latents(1), _keys(seed=5)))
    env.bind(["a cat", "dog"])(_latents(2), _keys())
    assert env.sample_fn._cache_size() == before == 1
    assert a.min() >= 0.0 and a.max() <= 1.0 and np.abs(a - b).max() > 1e-4
    for bad in (
        jnp.zeros((2, 4, FRAMES, 8, 8)),  # no sample axis
        jnp.zeros((2, 1, 4, FRAMES + 1, 8, 8)),  # other frame count
        jnp.zeros((2, 1, 4, FRAMES, 4, 4)),  # other size
        jnp.zeros((3, 1, 4, FRAMES, 8, 8)),  # 3 prompts' latents for 2 prompts
    ):
        with pytest.raises(ValueError, match="latents must be"):
            env_fn(bad, _keys())


def test_decode_chunks_agree_and_bad_settings_refused(video_model, env):
    from find_jax.envs.video.sampler import decode_frames

    x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, FRAMES, 8, 8))
    p = video_model.params["decoder"]
    whole = np.asarray(decode_frames(video_model.decoder, p, x, chunk=64))
    parts = np.asarray(decode_frames(video_model.decoder, p, x, chunk=4))  # 6 frames: one padded chunk
    assert whole.shape == (2, FRAMES, 16, 16, 3)
    np.testing.assert_allclose(parts, whole, atol=1e-5)
    with pytest.raises(ValueError, match="num_frames"):
        SamplerSettings(num_frames=0)
    with pytest.raises(ValueError, match="num_frames"):
        video_model.latent_shape(0)
    with pytest.raises(ValueError, match="decode_chunk"):
        make_environment(video_model, SamplerSettings(num_frames=2), mesh=None, decode_chunk=0)
    with pytest.raises(ValueError, match="multiples of 2"):
        make_environment(video_model, SamplerSettings(height=17, num_frames=2), mesh=None)


def test_missing_components_name_what_was_looked_for(video_dir, tmp_path):
    broken = shutil.copytree(video_dir, tmp_path / "m")
    for f in (broken / "unet").glob("diffusion_pytorch_model*"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="looked for diffusion_pytorch_model.safetensors"):
        load_model(broken)
    shutil.rmtree(broken)
    broken = shutil.copytree(video_dir, tmp_path / "m")
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="'vae' not found"):
        load_model(broken)
    index = json.loads((video_dir / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline"


def test_fp16_unet_variant_alone_loads(video_dir, video_model, tmp_path):
    from find_jax.envs.video.testing import make_tiny_video_unet

    other = shutil.copytree(video_dir, tmp_path / "fp16")
    shutil.rmtree(other / "unet")
    make_tiny_video_unet(other, seed=0, formats=("fp16",))
    half = load_model(other)
    a = jax.tree.leaves(half.params["unet"])
    b = jax.tree.leaves(video_model.params["unet"])
    assert all(x.dtype == jnp.float32 for x in a)
    assert max(float(jnp.abs(x - y).max()) for x, y in zip(a, b, strict=True)) < 1e-2
