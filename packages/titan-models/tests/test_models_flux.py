"""Flux: counts (meta, against diffusers), diffusers parity and adapter round trips, a training
step, the TP plan on 2 gloo ranks, the autoencoder, the tiny text encoders, packing and sampling."""

import dataclasses

import pytest
import torch
from titan_models import ModelConfigError, RunOptions, get_model_spec, spec_for_hf_config
from titan_models.flux import FluxArgs, image_ids, pack_latents, text_ids, unpack_latents
from titan_models.flux.sampling import denoise, time_schedule

SPEC = get_model_spec("flux")
DEBUG = SPEC.args_for("flux-debug")


def _meta_model(args):
    with torch.device("meta"):
        return SPEC.build(args)


def _inputs(args, batch=2, h=8, w=6, n_txt=7, seed=0):
    """Random model inputs; txt ids and the image t-axis are non-zero so all 3 RoPE axes matter."""
    g = torch.Generator().manual_seed(seed)
    img_ids = image_ids(batch, h, w)
    img_ids[..., 0] = 1.0
    txt_ids = torch.randint(0, 5, (1, n_txt, 3), generator=g).float().expand(batch, -1, -1)  # diffusers: one per batch
    return dict(img=torch.randn(batch, h * w // 4, args.in_channels, generator=g), img_ids=img_ids,
                txt=torch.randn(batch, n_txt, args.context_in_dim, generator=g), txt_ids=txt_ids,
                timesteps=torch.rand(batch, generator=g), y=torch.randn(batch, args.vec_in_dim, generator=g),
                guidance=torch.full((batch,), 3.5) if args.guidance_embed else None)


# ---------------------------------------------------------------- spec, counts, validate

def test_registry_shape_and_module_order():
    assert SPEC.name == "flux" and SPEC.task == "diffusion" and get_model_spec("qwen3").task == "lm"
    s = SPEC.shape(DEBUG)
    assert (s.n_layers, s.dim, s.n_heads, s.n_kv_heads, s.head_dim, s.ffn_hidden, s.vocab_size) == (4, 128, 4, 4, 32, 512, 0)
    assert s.qk_norm and not s.tie_embeddings
    model = _meta_model(DEBUG)
    names = dict(model.named_modules())
    assert all(n in names for n in SPEC.module_order(DEBUG)) and SPEC.module_order(DEBUG)[0] == "img_in"
    assert SPEC.pipeline_split_points(DEBUG) == [] and SPEC.cp_buffers(model) == []
    with pytest.raises(ModelConfigError, match=r"unknown flux flavor 'flux-deb'.*did you mean 'flux-debug'"):
        SPEC.args_for("flux-deb")


@pytest.mark.parametrize("flavor", sorted(SPEC.flavors))
def test_num_params_equals_built_model(flavor):
    args = SPEC.args_for(flavor)
    assert SPEC.num_params(args) == sum(p.numel() for p in _meta_model(args).parameters())


def test_debug_is_small_and_flops_formula():
    assert SPEC.num_params(DEBUG) <= 10_000_000
    a = SPEC.args_for("flux-schnell")
    h, seq = a.hidden_size, 4096 + 512
    dense = 57 * 12 * h * h + (64 + 4096 + 64) * h  # per-token block weights + img_in, txt_in, final linear
    assert SPEC.flops_per_token(a, seq) == 6 * dense + 12 * 57 * 24 * 128 * seq


def test_big_flavors_match_diffusers_and_published_counts():
    diffusers = pytest.importorskip("diffusers")
    counts = {}
    for flavor in ("flux-dev", "flux-schnell"):
        args = SPEC.args_for(flavor)
        config = {k: v for k, v in SPEC.state_dict_adapter(args).hf_config().items() if not k.startswith("_")}
        with torch.device("meta"):
            hf = diffusers.FluxTransformer2DModel(**config)
        counts[flavor] = SPEC.num_params(args)
        assert counts[flavor] == sum(p.numel() for p in hf.parameters())
    assert counts["flux-schnell"] == 11_891_178_560  # torchtitan: 11.89B; BFL: "12B"
    assert counts["flux-dev"] - counts["flux-schnell"] == 256 * 3072 + 3072 * 3072 + 2 * 3072  # guidance_in


def test_validate_names_the_field():
    with pytest.raises(ModelConfigError, match=r"num_heads=4 is not divisible by tensor-parallel degree tp=3"):
        SPEC.validate(DEBUG, tp=3)
    with pytest.raises(ModelConfigError, match=r"parallelism.pp=2.*not offered for Flux"):
        SPEC.validate(DEBUG, pp=2, names={"pp": "parallelism.pp"})
    with pytest.raises(ModelConfigError, match=r"axes_dim=\(8, 12, 10\) sums to 30"):
        SPEC.args_for("flux-debug", axes_dim=(8, 12, 10))
    with pytest.raises(ModelConfigError, match="context parallel"):
        SPEC.validate(DEBUG, cp=2)
    SPEC.validate(DEBUG, tp=4, sequence_parallel=True)


def test_run_options():
    a = SPEC.with_options(DEBUG, RunOptions(n_layers=3, max_seq_len=4096, vocab_size=0, sdpa_kernels=("math",)))
    assert (a.depth, a.depth_single_blocks, a.sdpa_kernels) == (2, 1, ("math",))
    with pytest.raises(ModelConfigError, match="attn_backend='flex'"):
        SPEC.with_options(DEBUG, RunOptions(attn_backend="flex"))


# ---------------------------------------------------------------- diffusers parity, adapter

def _random_diffusers(args, seed):
    diffusers = pytest.importorskip("diffusers")
    config = {k: v for k, v in SPEC.state_dict_adapter(args).hf_config().items() if not k.startswith("_")}
    hf = diffusers.FluxTransformer2DModel(**config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # every tensor random: norms around 1, weights ~ 1/sqrt(fan_in), biases 0.1
        for name, p in hf.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
    return hf


@pytest.mark.parametrize("guidance", [False, True])
def test_matches_diffusers_and_round_trips(guidance):
    args = dataclasses.replace(DEBUG, guidance_embed=guidance)
    hf = _random_diffusers(args, seed=int(guidance))
    adapter = SPEC.state_dict_adapter(args)
    hf_sd = hf.state_dict()
    model = _meta_model(args)
    model.to_empty(device="cpu")
    model.load_state_dict(adapter.from_hf(hf_sd), strict=True)
    x = _inputs(args)
    with torch.no_grad():
        ours = model(**x)
        ref = hf(hidden_states=x["img"], encoder_hidden_states=x["txt"], pooled_projections=x["y"],
                 timestep=x["timesteps"], img_ids=x["img_ids"][0], txt_ids=x["txt_ids"][0],
                 guidance=x["guidance"], return_dict=False)[0]
    assert ours.shape == (2, 12, 64)
    torch.testing.assert_close(ours, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-5)
    back = adapter.to_hf(adapter.from_hf(hf_sd))
    assert set(back) == set(hf_sd) and len(back) == len(hf_sd)
    assert all(torch.equal(back[k], hf_sd[k]) for k in hf_sd)
    titan_sd = model.state_dict()
    again = adapter.from_hf(adapter.to_hf(titan_sd))
    assert set(again) == set(titan_sd) and all(torch.equal(again[k], titan_sd[k]) for k in titan_sd)


def test_hf_config_round_trip_and_errors():
    for flavor in SPEC.flavors:
        args = SPEC.args_for(flavor)
        config = SPEC.state_dict_adapter(args).hf_config("bfloat16")
        assert SPEC.args_from_hf_config(config) == args
        assert spec_for_hf_config(config) is SPEC
    adapter = SPEC.state_dict_adapter(DEBUG)
    with pytest.raises(ModelConfigError, match="unexpected key 'blocks.9.img_mod.weight'"):
        adapter.to_hf({"blocks.9.img_mod.weight": torch.zeros(1)})
    with pytest.raises(ModelConfigError, match="needs both"):
        adapter.to_hf({"blocks.2.attn.wo.weight": torch.zeros(128, 128)})
    with pytest.raises(ModelConfigError, match="qkv_bias"):
        SPEC.state_dict_adapter(dataclasses.replace(DEBUG, qkv_bias=False)).hf_config()


# ---------------------------------------------------------------- training

def test_fresh_model_trains_and_every_parameter_gets_a_gradient():
    model = _meta_model(DEBUG)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    g = torch.Generator().manual_seed(0)
    x0 = pack_latents(torch.randn(4, 16, 8, 8, generator=g))
    noise = torch.randn(x0.shape, generator=g)
    x = _inputs(DEBUG, batch=4, h=8, w=8, n_txt=16)
    t = x["timesteps"][:, None, None]
    x["img"] = (1 - t) * x0 + t * noise
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(4):
        loss = ((model(**x) - (noise - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(b < a for a, b in zip(losses, losses[1:]))


def test_init_is_layout_independent_and_guidance_is_required():
    torch.manual_seed(3)
    a = SPEC.build(DEBUG)  # on CPU: initialized at once
    b = _meta_model(DEBUG)
    b.to_empty(device="cpu")
    b.init_weights()
    assert all(torch.equal(p, dict(b.named_parameters())[n]) for n, p in a.named_parameters())
    dev = dataclasses.replace(DEBUG, guidance_embed=True)
    x = _inputs(dev)
    x["guidance"] = None
    with pytest.raises(ModelConfigError, match="pass guidance"):
        SPEC.build(dev)(**x)


# ---------------------------------------------------------------- tensor parallel (2 gloo ranks)

def _tp_vs_single():
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.experimental import implicit_replication
    from torch.distributed.tensor.parallel import parallelize_module

    SPEC.validate(DEBUG, tp=2)
    torch.manual_seed(7)
    reference = SPEC.build(DEBUG)
    model = _meta_model(DEBUG)
    parallelize_module(model, init_device_mesh("cpu", (2,)), SPEC.tp_plan(model))
    model.to_empty(device="cpu")
    with implicit_replication():
        model.init_weights()
    sharded = all(isinstance(p, DTensor) for p in (model.blocks[0].txt_attn.wq.weight, model.blocks[3].mlp.w2.weight))
    full = {n: p.full_tensor() if isinstance(p, DTensor) else p for n, p in model.named_parameters()}
    init_equal = all(torch.equal(full[n], p) for n, p in reference.named_parameters())
    x = _inputs(DEBUG)
    target = torch.randn(2, 12, 64, generator=torch.Generator().manual_seed(5))
    out = {}
    for name, m in (("tp", model), ("ref", reference)):
        loss = ((m(**x) - target) ** 2).mean()
        loss.backward()
        out[name] = loss.item(), {n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                                  for n, p in m.named_parameters()}
    worst = max(((out["tp"][1][n] - g).abs().max() / g.abs().max()).item() for n, g in out["ref"][1].items())
    return sharded and init_equal, abs(out["tp"][0] - out["ref"][0]), worst


def test_tp_plan_matches_one_process():
    testing = pytest.importorskip("titan_mesh.testing")
    with testing.DistributedPool(world_size=2) as pool:
        for sharded_and_init_equal, loss_diff, grad_err in pool.run(_tp_vs_single):
            assert sharded_and_init_equal and loss_diff < 1e-5 and grad_err < 1e-4


# ---------------------------------------------------------------- autoencoder

def test_autoencoder_shapes_and_safetensors_round_trip(tmp_path):
    from safetensors.torch import save_file
    from titan_models.flux.autoencoder import AE_FLAVORS, AutoEncoder, load_autoencoder

    args = AE_FLAVORS["debug"]
    torch.manual_seed(0)
    ae = AutoEncoder(args)
    images = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = ae.encode(images)
        assert z.shape == (2, 16, 4, 6) and torch.equal(z, ae.encode(images))  # the mean: deterministic
        assert ae.decode(z).shape == (2, 3, 32, 48)
    path = tmp_path / "ae.safetensors"
    save_file(ae.state_dict(), str(path))
    loaded = load_autoencoder(path, args)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    with torch.no_grad():
        assert torch.equal(loaded.encode(images), z)
    bad = dict(ae.state_dict())
    bad.pop("encoder.mid.attn_1.q.weight")
    bad["encoder.extra.weight"] = torch.zeros(1)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ModelConfigError, match=r"bad.safetensors.*missing 1 keys: encoder.mid.attn_1.q.weight.*"
                                               r"unexpected 1 keys: encoder.extra.weight"):
        load_autoencoder(tmp_path / "bad.safetensors", args)
    with pytest.raises(ModelConfigError, match="no such file"):
        load_autoencoder(tmp_path / "none.safetensors", args)
    with pytest.raises(ModelConfigError, match="num_groups=32 does not divide 8"):
        AutoEncoder(dataclasses.replace(args, num_groups=32))


def test_full_autoencoder_has_bfl_layout():
    from titan_models.flux.autoencoder import AE_FLAVORS, AutoEncoder

    with torch.device("meta"):
        ae = AutoEncoder(AE_FLAVORS["flux"])
    keys = ae.state_dict()
    assert round(sum(p.numel() for p in ae.parameters()) / 1e6, 1) == 83.8  # torchtitan's count
    for key in ("encoder.down.0.block.1.norm2.weight", "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down.2.downsample.conv.weight", "decoder.up.3.upsample.conv.bias",
                "decoder.up.0.block.2.conv1.weight", "decoder.mid.attn_1.proj_out.weight", "encoder.conv_out.weight"):
        assert key in keys, key
    assert "encoder.down.3.downsample.conv.weight" not in keys and keys["encoder.conv_out.weight"].shape[0] == 32


# ---------------------------------------------------------------- text encoders

def test_tiny_text_encoders_are_deterministic():
    pytest.importorskip("transformers")
    from titan_models.flux.encoders import build_text_encoders

    captions = ["a red cube", "", "ünïcode " * 40]
    enc = build_text_encoders("tiny", "tiny", max_t5_len=32)
    t5, clip = enc.encode(captions)
    assert t5.shape == (3, 32, DEBUG.context_in_dim) and clip.shape == (3, DEBUG.vec_in_dim)
    assert torch.isfinite(t5).all() and torch.isfinite(clip).all() and not enc.training
    t5_again, clip_again = build_text_encoders("tiny", "tiny", max_t5_len=32).encode(captions)
    assert torch.equal(t5, t5_again) and torch.equal(clip, clip_again)
    assert not torch.equal(clip[0], clip[1])


def test_text_encoder_folders(tmp_path):
    tf = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from titan_models.flux.encoders import build_text_encoders

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelConfigError, match=r"empty.*lacks config.json, weights, tokenizer files"):
        build_text_encoders(str(tmp_path / "empty"), "tiny")
    with pytest.raises(ModelConfigError, match="not a folder"):
        build_text_encoders("tiny", str(tmp_path / "nowhere"))
    # a local T5 folder as save_pretrained writes it: a small model and a word-level tokenizer
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "cat": 4}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path / "t5"
    tf.T5EncoderModel(tf.T5Config(vocab_size=8, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
                      ).save_pretrained(folder)
    tok.save_pretrained(folder)
    t5, clip = build_text_encoders(str(folder), "tiny", max_t5_len=8).encode(["a cat", ""])
    assert t5.shape == (2, 8, 16) and clip.shape == (2, 32)


# ---------------------------------------------------------------- packing, sampling

def test_packing_order_round_trip_and_ids():
    z = torch.randn(2, 16, 6, 4)
    x = pack_latents(z)
    assert x.shape == (2, 6, 64)
    # token (i, j), channel c*4 + ph*2 + pw is z[c, 2i + ph, 2j + pw] (diffusers' FluxPipeline order)
    assert x[1, 1 * 2 + 1, 5 * 4 + 1 * 2 + 0] == z[1, 5, 2 * 1 + 1, 2 * 1 + 0]
    assert torch.equal(unpack_latents(x, 6, 4), z)
    ids = image_ids(2, 6, 4)
    assert ids.shape == (2, 6, 3) and ids[0, :, 0].eq(0).all()
    assert ids[0, :, 1].tolist() == [0, 0, 1, 1, 2, 2] and ids[0, :, 2].tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(text_ids(3, 5, "cpu"), torch.zeros(3, 5, 3))
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 16, 5, 4))


def test_time_schedule():
    for shift in (False, True):
        s = time_schedule(10, 1024, shift=shift)
        assert len(s) == 11 and s[0] == 1.0 and s[-1] == 0.0 and all(b < a for a, b in zip(s, s[1:]))
    assert time_schedule(4, 256, shift=False) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert time_schedule(4, 4096)[2] > time_schedule(4, 256)[2] > 0.5  # longer sequences: more noise kept


class _ConstantVelocity(torch.nn.Module):
    """v = y[:, 0] everywhere: Euler steps then move x by -y[:, 0] from t = 1 to 0."""

    def forward(self, img, img_ids, txt, txt_ids, timesteps, y, guidance=None):
        return torch.ones_like(img) * y[:, :1, None]


def test_denoise_euler_and_cfg():
    x = torch.randn(2, 6, 64)
    ids, txt, tids = image_ids(2, 6, 4), torch.zeros(2, 3, 8), text_ids(2, 3)
    y, y_u = torch.full((2, 4), 2.0), torch.full((2, 4), 1.0)
    sched = time_schedule(5, 6)
    out = denoise(_ConstantVelocity(), x, ids, txt, tids, y, sched)
    torch.testing.assert_close(out, x - 2.0)
    out = denoise(_ConstantVelocity(), x, ids, txt, tids, y, sched, cfg_scale=3.0, uncond=(txt, y_u))
    torch.testing.assert_close(out, x - (1.0 + 3.0 * (2.0 - 1.0)))
    model = SPEC.build(dataclasses.replace(DEBUG, guidance_embed=True))
    inp = _inputs(model.args)
    latents = denoise(model, inp["img"], inp["img_ids"], inp["txt"], inp["txt_ids"], inp["y"], time_schedule(2, 12),
                      guidance=3.5)
    assert latents.shape == inp["img"].shape and torch.isfinite(latents).all()


def test_flux_args_defaults():
    a = FluxArgs()
    assert (a.hidden_size, a.num_heads, a.head_dim, a.mlp_hidden, a.out_dim, a.n_blocks) == (3072, 24, 128, 12288, 64, 57)
    assert dataclasses.replace(a, out_channels=None).out_dim == 64


def test_pixel_autoencoder_keeps_flux_shapes_and_round_trips_blocky_images():
    from titan_models.flux import PixelAutoEncoder

    ae = PixelAutoEncoder()
    blocks = torch.rand(2, 3, 8, 8) * 2 - 1  # an image made of 4x4-pixel blocks survives exactly
    x = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3)
    z = ae.encode(x)
    assert z.shape == (2, 16, 4, 4) and not any(True for _ in ae.parameters())
    torch.testing.assert_close(ae.decode(z), x)
    assert z[:, 12:].abs().sum() == 0
