"""The vision tower's pretraining: labels line up with the tokens the language model receives, and it learns."""

import numpy as np
import pytest
import torch
from PIL import Image

from mbpo_lit.testbed.vision_stage import (
    SceneCollate,
    SceneLabels,
    VisionModule,
    image_tokens,
    token_f1,
    token_grid,
    vision_world,
    word_vectors,
)
from mbpo_lit.testbed.world import Scene, SceneObject, WorldConfig, object_coverage
from mbpo_lit.vlm.policy import ModelConfig, is_vision_parameter, load_policy


def test_coverage_is_the_share_of_each_cell_an_object_fills():
    cfg = WorldConfig(image_size=112)
    # A square of side 40 at (8, 8): its drawn body (8% margins) spans pixels 11.2-44.8 on each axis.
    scene = Scene([SceneObject("square", "red", 0, 8, 8, 40)])
    cover = object_coverage(scene, cfg, 4)[0]  # 28 px cells
    assert cover.shape == (4, 4)
    assert cover[0, 0] == pytest.approx((28 - 11.2) ** 2 / 28**2, abs=0.02)  # the corner cell, partly covered
    assert cover[0, 1] == pytest.approx((28 - 11.2) * (44.8 - 28) / 28**2, abs=0.02)
    assert cover[1, 1] == pytest.approx((44.8 - 28) ** 2 / 28**2, abs=0.02)
    assert cover[2:, :].sum() == 0 and cover[:, 2:].sum() == 0


def test_labels_name_the_kind_and_colour_of_every_covered_token():
    world = vision_world(WorldConfig())
    assert (world.min_objects, world.max_objects, world.p_color) == (1, 3, 1 / 6)
    item = SceneLabels(world, 10, grid=4)[3]
    assert item["image"].size == (112, 112) and item["kinds"].shape == (16, 8) and item["colors"].shape == (16, 6)
    # Each labelled token names at least one kind and as many colours as objects could cover it; the labels
    # are the same as a second draw (record i fixed by its index).
    covered = item["kinds"].sum(1) > 0
    assert covered.any() and (item["colors"][covered].sum(1) > 0).all()
    assert (item["colors"][~covered] == 0).all()
    again = SceneLabels(world, 10, grid=4)[3]
    assert np.array_equal(again["kinds"], item["kinds"]) and np.array_equal(
        np.asarray(again["image"]), np.asarray(item["image"])
    )


def test_vision_tokens_come_in_raster_order_of_the_image(tiny_path):
    """A bright block in one token's patch changes the pixels of that token only (Qwen's 2x2-merged patches,
    LLaVA's patches), so label j is the label of token j."""
    policy = load_policy(ModelConfig(str(tiny_path), precision="fp32", quantization="none", lora=None))
    world = WorldConfig(image_size=56)  # the tiny checkpoints' size
    grid = token_grid(policy.model, policy.processor, world)
    side = 56 // grid
    dark = np.zeros((56, 56, 3), dtype=np.uint8)
    r, c = grid - 1, 0  # bottom-left token
    lit = dark.copy()
    lit[r * side : (r + 1) * side, c * side : (c + 1) * side] = 255
    collate = SceneCollate(policy.processor)
    with torch.no_grad():
        a, b = (
            image_tokens(policy.model, collate([{"image": Image.fromarray(x), "kinds": 0, "colors": 0}])["pixels"])[0]
            for x in (dark, lit)
        )
    changed = ((a - b).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
    if policy.arch.model_type == "llava":  # CLIP attends across patches: every token changes, its own the most
        assert int((a - b).abs().amax(-1).argmax()) == r * grid + c
    else:  # the last Qwen block attends fully too; the merger's input patch order is what is checked
        pixels = collate([{"image": Image.fromarray(x), "kinds": 0, "colors": 0} for x in (dark, lit)])["pixels"]
        rows = pixels["pixel_values"].view(2, -1, pixels["pixel_values"].shape[-1])
        differing = ((rows[0] - rows[1]).abs().amax(-1) > 0).nonzero().flatten()
        merge = policy.processor.image_processor.merge_size**2
        assert set((differing // merge).tolist()) == {r * grid + c}
    assert changed


@pytest.mark.parametrize("heads", ["linear", "words"])
def test_the_heads_learn_to_see_and_only_the_vision_side_trains(tiny_root, heads):
    """200 steps on the tiny Qwen2.5-VL: the held-out loss halves and the token-level kind F1 rises, and no
    language-model weight moves (with word heads: not even the embeddings the heads are made of)."""
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    policy = load_policy(
        ModelConfig(str(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)), precision="fp32", quantization="none")
    )
    model = policy.model.train()
    for n, p in model.named_parameters():
        p.requires_grad_(is_vision_parameter(n, policy.arch))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    world = vision_world(
        WorldConfig(image_size=56, kinds=["circle", "square", "cross"], colors=["red", "green", "blue", "white"])
    )
    grid = token_grid(model, policy.processor, world)
    data, collate = SceneLabels(world, 1600, grid), SceneCollate(policy.processor)
    torch.manual_seed(0)
    kinds, colors = 3, 4
    if heads == "words":
        kinds, colors = (word_vectors(model, policy.processor.tokenizer, w) for w in (world.kinds, world.colors))
    module = VisionModule(model, model.config.get_text_config().hidden_size, kinds, colors, lr=3e-3, steps=60)
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    held = collate([SceneLabels(world, 32, grid, seed=5)[i] for i in range(32)])

    def f1() -> float:  # kind F1 on held-out scenes, at the heads' 0.5 threshold
        with torch.no_grad():
            return token_f1(module.kind_head(image_tokens(model, held["pixels"])), held["kinds"]).item()

    def loss() -> float:  # the heads' held-out loss, kinds and colours
        with torch.no_grad():
            tokens, bce = image_tokens(model, held["pixels"]), torch.nn.functional.binary_cross_entropy_with_logits
            return (
                bce(module.kind_head(tokens), held["kinds"]) + bce(module.color_head(tokens), held["colors"])
            ).item()

    start, start_loss = f1(), loss()
    for step in range(200):
        batch = collate([data[step * 8 + i] for i in range(8)])  # never the same scene twice
        opt.zero_grad()
        module.training_step(batch, step).backward()
        opt.step()
    print(f"kind F1 {start:.3f} -> {f1():.3f}, held-out loss {start_loss:.3f} -> {loss():.3f}")
    assert f1() > start + 0.25 and loss() < 0.5 * start_loss
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != is_vision_parameter(n, policy.arch), n


def test_word_vectors_are_the_embeddings_of_the_words_as_questions_spell_them(tiny_path):
    policy = load_policy(ModelConfig(str(tiny_path), precision="fp32", quantization="none", lora=None))
    tok, table = policy.processor.tokenizer, policy.model.get_input_embeddings().weight
    vectors = word_vectors(policy.model, tok, ["circle", "red"])
    for word, v in zip(["circle", "red"], vectors):
        ids = tok("What color is the " + word, add_special_tokens=False)["input_ids"]
        pieces = tok.encode(" " + word, add_special_tokens=False)
        assert ids[-len(pieces) :] == pieces  # the pieces are how the word appears inside a question
        assert torch.allclose(v, table[pieces].mean(0))
