"""The Flax UNet3D (ModelScope) against diffusers' PyTorch ``UNet3DConditionModel``, and strict weight loading.

A tiny random torch UNet3D with the real block types is saved in diffusers' layout; diffusers' own
``from_pretrained`` reads it back as the oracle, our loader reads the same files.
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from find_jax.envs.loading import ModelLoadError  # noqa: E402
from find_jax.envs.video.convert import (  # noqa: E402
    UNet3DWeightsError,
    convert_unet3d_state_dict,
    flax_path_to_torch_key,
    torch_key_to_flax,
)
from find_jax.envs.video.loading import (  # noqa: E402
    load_unet3d,
    read_torch_state_dict,
    read_unet3d_config,
    unet3d_weight_names,
)
from find_jax.envs.video.testing import make_tiny_video_unet  # noqa: E402

ST = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_video")
    make_tiny_video_unet(root, seed=0, formats=("safetensors", "fp16", "bin"))
    return root


@pytest.fixture(scope="module")
def torch_unet(model_dir):
    from diffusers import UNet3DConditionModel

    return UNet3DConditionModel.from_pretrained(str(model_dir / "unet")).eval()


@pytest.fixture(scope="module")
def flax_unet(model_dir):
    model, params = load_unet3d(model_dir)
    return model, params, jax.jit(model.apply)


def _inputs(seed, b, f, side, ctx_len=5, ctx_dim=32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((b, 4, f, side, side)).astype(np.float32)
    ctx = rng.standard_normal((b, ctx_len, ctx_dim)).astype(np.float32)
    return x, ctx


def _torch_forward(unet, x, t, ctx):
    with torch.no_grad():
        t_in = torch.as_tensor(t) if np.ndim(t) else t
        return unet(torch.from_numpy(x), t_in, torch.from_numpy(ctx)).sample.numpy()


def test_forward_matches_torch(flax_unet, torch_unet):
    model, params, apply = flax_unet
    x, ctx = _inputs(0, b=2, f=3, side=8)
    t = np.array([10, 500])
    ref = _torch_forward(torch_unet, x, t, ctx)
    out = np.asarray(apply({"params": params}, x, t, ctx))
    assert out.shape == ref.shape == (2, 4, 3, 8, 8)
    assert ref.std() > 0.1  # every weight carries noise: the output is far from trivial
    assert np.abs(out - ref).max() < 1e-4
    # frames interact (temporal conv + attention): changing frame 0 moves frame 2's prediction in both
    x2 = x.copy()
    x2[:, :, 0] += 1.0
    moved = np.asarray(apply({"params": params}, x2, t, ctx)) - out
    assert np.abs(moved[:, :, 2]).max() > 1e-3
    assert np.abs(moved - (_torch_forward(torch_unet, x2, t, ctx) - ref)).max() < 1e-4


def test_forward_odd_size_scalar_timestep_matches_torch(flax_unet, torch_unet):
    """7x7 latents (not divisible by the downsampling: upsampling matches the skip size) and a scalar t."""
    model, params, apply = flax_unet
    x, ctx = _inputs(1, b=1, f=2, side=7, ctx_len=3)
    ref = _torch_forward(torch_unet, x, 321, ctx)
    out = np.asarray(apply({"params": params}, x, 321, ctx))
    assert out.shape == (1, 4, 2, 7, 7)
    assert np.abs(out - ref).max() < 1e-4


def test_key_names_round_trip(model_dir):
    state = read_torch_state_dict(model_dir / "unet" / ST)
    assert any(v.ndim == 5 for v in state.values())  # the Conv3d kernels are there
    for key, value in state.items():
        path, _ = torch_key_to_flax(key, value.ndim)
        assert flax_path_to_torch_key(path) == key


def test_strict_loading_names_extra_missing_and_misshaped_keys(model_dir):
    config = read_unet3d_config(model_dir / "unet")
    state = read_torch_state_dict(model_dir / "unet" / ST)
    assert convert_unet3d_state_dict(state, config)  # the clean dict converts

    extra = {**state, "down_blocks.0.attentions.0.bogus.weight": np.zeros((4, 4), np.float32)}
    with pytest.raises(UNet3DWeightsError, match=r"unmapped torch keys \(1\): down_blocks\.0\.attentions\.0\.bogus"):
        convert_unet3d_state_dict(extra, config)

    gone = "mid_block.temp_convs.1.conv4.3.weight"
    missing = {k: v for k, v in state.items() if k != gone}
    with pytest.raises(UNet3DWeightsError, match=r"missing torch keys \(1\): " + gone.replace(".", r"\.")):
        convert_unet3d_state_dict(missing, config)

    conv3d = "down_blocks.0.temp_convs.0.conv1.2.weight"
    bad = {**state, "conv_in.weight": np.zeros((32, 5, 3, 3), np.float32), conv3d: np.zeros((32, 32, 1, 1, 1))}
    with pytest.raises(UNet3DWeightsError) as err:
        convert_unet3d_state_dict(bad, config)
    msg = str(err.value)
    assert "wrong shapes (2)" in msg and "missing" not in msg and "unmapped" not in msg
    assert "conv_in.weight: got (32, 5, 3, 3), config wants (32, 4, 3, 3)" in msg
    assert f"{conv3d}: got (32, 32, 1, 1, 1), config wants (32, 32, 3, 1, 1)" in msg


def test_loader_refuses_mismatched_file_naming_it(model_dir, tmp_path):
    from safetensors.numpy import save_file

    unet = tmp_path / "unet"
    unet.mkdir()
    shutil.copy(model_dir / "unet" / "config.json", unet)
    state = read_torch_state_dict(model_dir / "unet" / ST)
    state["extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(state, str(unet / ST))
    with pytest.raises(ModelLoadError, match=r"weights in .*diffusion_pytorch_model\.safetensors.*extra\.weight"):
        load_unet3d(tmp_path)


def test_fp16_variant_and_bin(model_dir, flax_unet, tmp_path):
    _, params32, _ = flax_unet
    _, params16 = load_unet3d(model_dir, variant="fp16")
    leaves32, leaves16 = jax.tree.leaves(params32), jax.tree.leaves(params16)
    assert all(a.dtype == np.float32 for a in leaves16)  # upcast by default
    diffs = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(leaves32, leaves16, strict=True)]
    assert 0 < max(diffs) < 2e-3  # the fp16 file was read (rounded), and it is the same model

    only_bin = tmp_path / "bin_only"
    shutil.copytree(model_dir / "unet", only_bin / "unet", ignore=shutil.ignore_patterns("*.safetensors"))
    _, params_bin = load_unet3d(only_bin / "unet")  # the unet folder itself works too
    for a, b in zip(leaves32, jax.tree.leaves(params_bin), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_weights_say_what_was_looked_for(model_dir, tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    shutil.copy(model_dir / "unet" / "config.json", unet)
    shutil.copy(model_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors", unet)
    with pytest.raises(ModelLoadError) as err:
        load_unet3d(tmp_path)
    msg = str(err.value)
    assert all(name in msg for name in unet3d_weight_names(None))
    assert "present: diffusion_pytorch_model.fp16.safetensors" in msg
    assert load_unet3d(tmp_path, variant="fp16")[1]  # and that variant loads


def test_refuses_non_unet3d_config(model_dir, tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    raw = json.loads((model_dir / "unet" / "config.json").read_text())
    (unet / "config.json").write_text(json.dumps({**raw, "_class_name": "UNet2DConditionModel"}))
    shutil.copy(model_dir / "unet" / ST, unet)
    with pytest.raises(ModelLoadError, match="describes a 'UNet2DConditionModel', not a 'UNet3DConditionModel'"):
        load_unet3d(tmp_path)
    (unet / "config.json").write_text(json.dumps({**raw, "transformer_layers_per_block": 2}))
    with pytest.raises(ModelLoadError, match=r"unknown config keys \['transformer_layers_per_block'\]"):
        load_unet3d(tmp_path)


def test_blocks_match_torch_at_tiny_variance(flax_unet, torch_unet):
    """Each temporal/spatial block alone, on inputs with variance near the GroupNorm eps: a wrong eps
    (1e-6 in the transformers, 1e-5 in the temporal conv and resnets) or an approximate GELU shows here."""
    from find_jax.envs.video import layers

    _, params, _ = flax_unet
    block, tblock = params["down_blocks_0"], torch_unet.down_blocks[0]
    rng = np.random.default_rng(2)
    f = 3
    x = (1e-3 * rng.standard_normal((2 * f, 32, 4, 4))).astype(np.float32)  # [B*F, C, h, w], var ~ 1e-6
    ctx = rng.standard_normal((2 * f, 5, 32)).astype(np.float32)
    temb = rng.standard_normal((2 * f, 128)).astype(np.float32)
    x_t, x_j = torch.from_numpy(x), x.transpose(0, 2, 3, 1)
    with torch.no_grad():
        cases = [
            (layers.TemporalConvLayer(8, f), "temp_convs_0", (x_j,), tblock.temp_convs[0](x_t, num_frames=f)),
            (
                layers.TransformerTemporal(4, 8, 8, f),
                "temp_attentions_0",
                (x_j,),
                tblock.temp_attentions[0](x_t, num_frames=f),
            ),
            (
                layers.Transformer2D(4, 8, 8),
                "attentions_0",
                (x_j, ctx),
                tblock.attentions[0](x_t, torch.from_numpy(ctx)),
            ),
            (
                layers.ResnetBlock2D(32, 8, 1e-5),
                "resnets_0",
                (x_j, temb),
                tblock.resnets[0](x_t, torch.from_numpy(temb)),
            ),
        ]
    for module, name, args, ref in cases:
        ref = (ref[0] if isinstance(ref, tuple) else getattr(ref, "sample", ref)).numpy()
        out = np.asarray(jax.jit(module.apply)({"params": block[name]}, *args)).transpose(0, 3, 1, 2)
        assert np.abs(out - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()), name


def test_modelscope_sized_config_maps_strictly():
    """At ModelScope's real sizes (diffusers' defaults, the hub config): every torch key maps with its shape.

    Shapes only: the torch model is built on the meta device and the Flax tree with ``jax.eval_shape``.
    """
    from diffusers import UNet3DConditionModel

    from find_jax.envs.video.convert import plan_unet3d_conversion
    from find_jax.envs.video.unet3d import UNet3DConfig

    with torch.device("meta"):
        ref = UNet3DConditionModel(sample_size=32)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    plan = plan_unet3d_conversion(shapes, UNet3DConfig(sample_size=32))
    assert len(plan) == len(shapes)
    assert 1.40e9 < sum(np.prod(s) for s in shapes.values()) < 1.42e9  # the 1.41 B parameters


@pytest.mark.slow  # bf16 compiles slowly on CPU (~20 s); the option is for GPUs
def test_bfloat16_compute(model_dir, flax_unet):
    """The GPU option: bf16 params and compute run and stay near float32 (GroupNorm statistics in fp32)."""
    import jax.numpy as jnp

    model32, params32, apply32 = flax_unet
    model16, params16 = load_unet3d(model_dir, dtype=jnp.bfloat16)
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(params16))
    x, ctx = _inputs(3, b=1, f=2, side=8)
    want = np.asarray(apply32({"params": params32}, x, 700, ctx))
    got = jax.jit(model16.apply)({"params": params16}, x, 700, ctx)
    assert got.dtype == jnp.bfloat16
    err = np.abs(np.asarray(got, np.float32) - want).max()
    assert err < 0.05 * np.abs(want).max()


def test_hub_id_from_local_cache_only(model_dir, tmp_path, monkeypatch):
    """A hub id resolves through the local Hugging Face cache layout; an id not there is refused, not fetched."""
    import huggingface_hub.constants as hf_constants

    repo = tmp_path / "hub" / "models--ali-vilab--tiny-t2v"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(model_dir / "unet", snapshot / "unet", ignore=shutil.ignore_patterns("*.bin", "*fp16*"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, params = load_unet3d("ali-vilab/tiny-t2v")
    assert params["conv_in"]["kernel"].shape == (3, 3, 4, 32)
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache|neither a local directory"):
        load_unet3d("ali-vilab/not-cached")
