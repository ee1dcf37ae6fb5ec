"""The model layer on tiny real checkpoints of each architecture, unquantized and in 4-bit NF4 with LoRA."""

import os
import subprocess
import sys

import bitsandbytes as bnb
import numpy as np
import pytest
import torch
from peft import PeftModel
from PIL import Image

from mbpo_lit.testbed.tiny import TinySpec, write_tiny_checkpoint
from mbpo_lit.vlm.chat import encode_prompts
from mbpo_lit.vlm.logprobs import answer_logprobs
from mbpo_lit.vlm.policy import (
    LoraSettings,
    ModelConfig,
    is_vision_parameter,
    load_policy,
    reference_mode,
    save_adapter,
    trainable_parameters,
)

QUESTIONS = ["What color is the circle?", "Is there a cat in the image? Answer yes or no."]
ANSWERS = ["red", "no"]


def images(n=2, seed=0, size=56):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for _ in range(n)]


def config(path, quantization="4bit", **kw):
    kw.setdefault("lora", LoraSettings(r=4, alpha=8, dropout=0.0))
    return ModelConfig(str(path), precision="fp32", quantization=quantization, device="cpu", **kw)


def nll(model, processor, imgs=None, pixel_values=None):
    lp, mask = answer_logprobs(model, processor, QUESTIONS, ANSWERS, imgs or images(), pixel_values=pixel_values)
    return -(lp * mask).sum() / mask.sum()


def train_steps(policy, steps=3, gradient_checkpointing=False):
    params = list(trainable_parameters(policy.model).values())
    opt = torch.optim.AdamW(params, lr=1e-2)
    policy.model.train()
    for _ in range(steps):
        opt.zero_grad()
        nll(policy.model, policy.processor).backward()
        opt.step()
    policy.model.eval()


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_load_quantizes_language_model_only_and_trains_only_adapters(tiny_path, quantization):
    policy = load_policy(config(tiny_path, quantization))
    assert isinstance(policy.model, PeftModel)
    named = dict(policy.model.named_modules())
    four_bit = [n for n, m in named.items() if isinstance(m, bnb.nn.Linear4bit)]
    if quantization == "4bit":
        assert four_bit and all("language_model" in n for n in four_bit)
        assert not any(is_vision_parameter(n, policy.arch) for n in four_bit)
    else:
        assert four_bit == []
    trainable = trainable_parameters(policy.model)
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(is_vision_parameter(n, policy.arch) for n in trainable)
    assert policy.processor.tokenizer.padding_side == "left"


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_steps_change_every_lora_weight_and_no_base_weight(tiny_path, quantization):
    policy = load_policy(config(tiny_path, quantization))
    before = snapshot(policy.model)
    train_steps(policy, steps=3)
    after = snapshot(policy.model)
    for name, value in after.items():
        changed = not torch.equal(value, before[name])
        if "lora_" in name:
            assert changed, f"LoRA parameter {name} did not change"
        else:
            assert not changed, f"base parameter {name} changed"


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_reference_is_the_base_model_after_training(tiny_path, quantization):
    policy = load_policy(config(tiny_path, quantization))
    base = load_policy(config(tiny_path, quantization, lora=None)).model.eval()
    train_steps(policy, steps=3)
    with torch.no_grad():
        base_nll = nll(base, policy.processor)
        trained_nll = nll(policy.model, policy.processor)
    with reference_mode(policy.model) as ref:
        ref_nll = nll(ref, policy.processor)
    assert torch.allclose(ref_nll, base_nll, atol=1e-6)
    assert not torch.allclose(trained_nll, base_nll, atol=1e-4)  # the adapters did learn something
    # The reference shares the weights: one copy of every base tensor, not two.
    assert sum(1 for n, _ in policy.model.named_parameters() if "lora_" not in n) == sum(1 for _ in base.parameters())


def test_adapters_round_trip_through_disk_and_peft(tiny_path, tmp_path):
    policy = load_policy(config(tiny_path, "4bit"))
    train_steps(policy, steps=2)
    with torch.no_grad():
        expected = nll(policy.model, policy.processor)
    out = save_adapter(policy.model, tmp_path / "adapter")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()

    # peft's own loader reads what mbpo_lit wrote ...
    base = load_policy(config(tiny_path, "4bit", lora=None)).model
    reloaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        assert torch.allclose(nll(reloaded, policy.processor), expected, atol=1e-5)
    # ... and so does mbpo_lit's, ready to train further.
    resumed = load_policy(config(tiny_path, "4bit", adapter_path=str(out)))
    with torch.no_grad():
        assert torch.allclose(nll(resumed.model.eval(), policy.processor), expected, atol=1e-5)
    assert trainable_parameters(resumed.model)


def test_a_fit_from_saved_adapters_keeps_them_frozen_as_its_reference(tiny_root, tmp_path):
    """The KL reference of a fit from `adapter_path` is the starting policy (KL 0 at step 0), not the base."""
    from safetensors import safe_open

    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    path = ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)
    start = load_policy(config(path, "4bit"))
    train_steps(start, steps=2)  # adapters far from zero
    saved = save_adapter(start.model, tmp_path / "start")
    base = load_policy(config(path, "4bit", lora=None)).model.eval()
    policy = load_policy(config(path, "4bit", adapter_path=str(saved)))
    model, processor = policy.model.eval(), policy.processor

    def logprobs(m):
        with torch.no_grad():
            return answer_logprobs(m, processor, QUESTIONS, ANSWERS, images())[0]

    trainable = trainable_parameters(model)
    assert trainable and all(".default." in n for n in trainable)  # the copy named "reference" is frozen
    at_start, in_base = logprobs(model), logprobs(base)
    with reference_mode(model) as ref:
        reference = logprobs(ref)
    assert torch.equal(reference, at_start)  # KL 0 at step 0
    assert not torch.allclose(reference, in_base, atol=1e-4)  # the adapter-disabled base is another policy
    assert set(trainable_parameters(model)) == set(trainable)  # reference_mode left requires_grad as it was

    train_steps(policy, steps=2)
    with reference_mode(model) as ref:
        assert torch.equal(logprobs(ref), at_start)  # training moved the policy, not its reference
    trained = logprobs(model)
    assert not torch.allclose(trained, at_start, atol=1e-4)

    # The saved adapters are the trained copy only, in peft's plain single-adapter layout.
    out = save_adapter(model, tmp_path / "after")
    assert not (out / "reference").exists()
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        assert f.keys() and not any("reference" in k for k in f.keys())
    reloaded = PeftModel.from_pretrained(load_policy(config(path, "4bit", lora=None)).model, out).eval()
    torch.testing.assert_close(logprobs(reloaded), trained, atol=1e-5, rtol=1e-4)

    # reference: base keeps the model before the adapters as the reference.
    old_rule = load_policy(config(path, "4bit", adapter_path=str(saved), reference="base")).model.eval()
    with reference_mode(old_rule) as ref:
        torch.testing.assert_close(logprobs(ref), in_base, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_loss_has_a_gradient_with_respect_to_pixels(tiny_path, quantization):
    policy = load_policy(config(tiny_path, quantization))
    batch = encode_prompts(policy.processor, QUESTIONS, images())
    pixels = batch["pixel_values"].clone().requires_grad_(True)
    loss = nll(policy.model, policy.processor, pixel_values=pixels)
    (grad,) = torch.autograd.grad(loss, pixels)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_training_after_generation_in_eval_mode_still_works_in_4bit(tiny_path):
    """GRPO alternates generation (eval, no grad) and training on one model (bitsandbytes CPU repacking)."""
    policy = load_policy(config(tiny_path, "4bit"))
    policy.model.eval()
    with torch.no_grad():
        batch = encode_prompts(policy.processor, QUESTIONS, images())
        policy.model.generate(**batch, max_new_tokens=2, do_sample=False)
    before = snapshot(policy.model)
    train_steps(policy, steps=2)
    assert any(not torch.equal(v, before[n]) for n, v in snapshot(policy.model).items() if "lora_" in n)


def test_gradient_checkpointing_with_frozen_4bit_base_still_trains_adapters(tiny_path):
    policy = load_policy(config(tiny_path, "4bit", gradient_checkpointing=True))
    policy.model.train()
    nll(policy.model, policy.processor).backward()
    grads = [p.grad for p in trainable_parameters(policy.model).values()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_batched_left_padded_generation_equals_one_by_one(tiny_path, quantization):
    policy = load_policy(config(tiny_path, quantization))
    model, processor = policy.model.eval(), policy.processor
    questions = ["What color is the circle?", "How many objects are there in this picture? Answer with a number."]
    imgs = images(2, seed=3)

    def generate(qs, ims):
        batch = encode_prompts(processor, qs, ims)
        out = model.generate(**batch, max_new_tokens=8, do_sample=False)
        return processor.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    batched = generate(questions, imgs)
    single = [generate([q], [im])[0] for q, im in zip(questions, imgs)]
    assert encode_prompts(processor, questions, imgs)["attention_mask"][:, 0].tolist().count(0) == 1  # padded
    assert batched == single


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_embd=64, n_layer=1, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model_type='gpt2'.*supported: Qwen2\.5-VL"):
        load_policy(config(tmp_path))


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint.*does not exist"):
        load_policy(config(missing))


def test_4bit_where_bitsandbytes_cannot_run_is_explained(tmp_path):
    # 96 is not a multiple of bitsandbytes' CPU block size (64): its 4-bit kernels would reject the layers.
    path = write_tiny_checkpoint(
        "qwen2_5_vl",
        tmp_path / "odd",
        TinySpec(hidden_size=96, intermediate_size=160, num_heads=2, vision_hidden_size=64),
    )
    with pytest.raises(ValueError, match=r"quantization='4bit' on the CPU.*multiples of 64.*hidden_size"):
        load_policy(config(path, "4bit"))
    assert load_policy(config(path, "none")).model is not None  # unquantized is fine


def test_4bit_without_bitsandbytes_is_explained(tiny_root, monkeypatch):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    path = ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(RuntimeError, match="quantization='4bit' needs bitsandbytes"):
        load_policy(config(path, "4bit"))


def test_hub_id_loads_from_the_hub_cache(tiny_root, tmp_path):
    """A hub id goes through the hub code path; offline, an already-cached snapshot is what it serves."""
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    src = ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)
    commit = "0" * 40
    repo = tmp_path / "hub" / "models--mbpo-test--tiny-qwen"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (snap / f.name).symlink_to(f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "from mbpo_lit.vlm.policy import ModelConfig, load_policy;"
        "p = load_policy(ModelConfig('mbpo-test/tiny-qwen', precision='fp32', quantization='none', device='cpu'));"
        "print(type(p.model.base_model.model).__name__, p.arch.model_type)"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Qwen2_5_VLForConditionalGeneration qwen2_5_vl" in out.stdout
    # And an id that is in no cache fails with a message that names it.
    code = "from mbpo_lit.vlm.policy import ModelConfig, load_policy; load_policy(ModelConfig('mbpo-test/absent'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "'mbpo-test/absent' is not a local path" in out.stderr


def test_precision_auto_is_fp32_on_the_cpu(tiny_path):
    policy = load_policy(ModelConfig(str(tiny_path), precision="auto", quantization="none", lora=None, device="cpu"))
    assert {p.dtype for p in policy.model.parameters()} == {torch.float32}
