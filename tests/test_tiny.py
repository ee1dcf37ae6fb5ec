"""Tiny checkpoints are complete Hugging Face checkpoints, loadable by the Auto classes like a 7B one."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

from mbpo_lit.testbed.tiny import LLAVA_SPECIALS, QWEN_SPECIALS, ensure_tiny_checkpoint, write_tiny_checkpoint
from mbpo_lit.vlm.arch import load_processor
from mbpo_lit.vlm.chat import check_image_tokens, encode_prompts, features_per_image, image_token_id


def test_checkpoint_has_every_part(tiny_path):
    names = {p.name for p in tiny_path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= names
    assert "preprocessor_config.json" in names or "processor_config.json" in names
    config = AutoConfig.from_pretrained(tiny_path)
    model = AutoModelForImageTextToText.from_pretrained(tiny_path)
    assert type(model).__name__.endswith("ForConditionalGeneration")
    text = getattr(config, "text_config", config)
    # Widths bitsandbytes' CPU 4-bit kernels accept (multiples of 64).
    assert text.hidden_size % 64 == 0 and text.intermediate_size % 64 == 0


def test_special_tokens_are_single_tokens(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    specials = LLAVA_SPECIALS if "llava" in tiny_path.name else QWEN_SPECIALS
    for s in specials:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and tok.convert_ids_to_tokens(ids)[0] == s
    text = "What color is the circle?"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_processor_expands_one_placeholder_per_image_feature(tiny_path):
    config = AutoConfig.from_pretrained(tiny_path)
    processor = load_processor(tiny_path, config.model_type)
    img = Image.fromarray(np.zeros((56, 56, 3), dtype="uint8"))
    batch = encode_prompts(processor, ["What color is the circle?"], [img])
    n_tokens = int((batch["input_ids"] == image_token_id(processor)).sum())
    assert n_tokens == features_per_image(batch, processor)[0] > 0
    model = AutoModelForImageTextToText.from_pretrained(tiny_path)
    with torch.no_grad():
        feats = model.get_image_features(**{k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")})
    feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
    if isinstance(feats, (list, tuple)):
        total = sum(f.shape[0] for f in feats)
    else:
        total = feats.reshape(-1, feats.shape[-1]).shape[0]
    assert total == n_tokens


def test_truncated_image_span_is_reported_with_the_record(tiny_path):
    config = AutoConfig.from_pretrained(tiny_path)
    processor = load_processor(tiny_path, config.model_type)
    img = Image.fromarray(np.zeros((56, 56, 3), dtype="uint8"))
    batch = encode_prompts(processor, ["q one", "q two"], [img, img])
    # Drop one placeholder of the second prompt, as truncation through the image span would.
    ids = batch["input_ids"].clone()
    pos = (ids[1] == image_token_id(processor)).nonzero()[0, 0]
    ids[1, pos] = processor.tokenizer.pad_token_id
    batch["input_ids"] = ids
    with pytest.raises(ValueError, match=r"record 'rec-7'.*image placeholder tokens but"):
        check_image_tokens(batch, processor, record_ids=["rec-0", "rec-7"])


def test_writing_is_deterministic_and_cached(tmp_path):
    a = write_tiny_checkpoint("qwen2_5_vl", tmp_path / "a")
    b = write_tiny_checkpoint("qwen2_5_vl", tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert json.loads((a / "tokenizer.json").read_text()) == json.loads((b / "tokenizer.json").read_text())
    first = ensure_tiny_checkpoint("llava", tmp_path)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_checkpoint("llava", tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rewritten


def test_unknown_arch_is_named(tmp_path):
    with pytest.raises(ValueError, match="'gpt2'"):
        write_tiny_checkpoint("gpt2", tmp_path)


def test_vision_tokens_are_suppressed_in_generation(tiny_path):
    from transformers import AutoModelForImageTextToText

    from mbpo_lit.vlm.chat import vision_token_ids

    config = AutoConfig.from_pretrained(tiny_path)
    processor = load_processor(tiny_path, config.model_type)
    ids = vision_token_ids(processor)
    assert image_token_id(processor) in ids
    model = AutoModelForImageTextToText.from_pretrained(tiny_path)
    with torch.no_grad():  # make the image token the model's favourite, then check it is never emitted
        model.lm_head.weight[image_token_id(processor)] = model.lm_head.weight.abs().max() * 50
    img = Image.fromarray(np.zeros((56, 56, 3), dtype="uint8"))
    batch = encode_prompts(processor, ["What color is the circle?"], [img])
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, suppress_tokens=ids)
    assert not set(out[0, batch["input_ids"].shape[1] :].tolist()) & set(ids)


def test_cli_writes_a_checkpoint_of_the_given_spec(tmp_path, capsys):
    from mbpo_lit.testbed import tiny

    path = tiny.main(["--out", str(tmp_path / "ck"), "--arch", "llava", "--spec.image_size", "112"])
    assert path == tmp_path / "ck" and "wrote tiny llava" in capsys.readouterr().out
    assert AutoConfig.from_pretrained(path).vision_config.image_size == 112
    with pytest.raises(SystemExit) as exit_:
        tiny.main(["--print_config"])  # --out is required, --print_config still answers
    assert exit_.value.code == 0 and "arch: qwen2_5_vl" in capsys.readouterr().out
