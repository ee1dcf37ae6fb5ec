"""The researcher's path on real photographs, end to end, for each architecture: mine pairs from a VQA file of
photographs of mixed sizes (default batch size), fit on those pairs plus online prompts from benchmark files,
then evaluate the written adapter on POPE's three subset files and on AMBER's discriminative layout."""

import json

import pytest
from datasets import load_from_disk
from test_fit import tiny_config, write_config

import benchmark_files as bf
from mbpo_lit.core.answers import is_correct
from mbpo_lit.data.benchmarks import Amber, Pope
from mbpo_lit.evaluation import EvalConfig, evaluate_model
from mbpo_lit.fit import main
from mbpo_lit.mining import MineConfig, mine_pairs
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

POPE_SUBSETS = ("random", "popular", "adversarial")


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_vl", "llava"])
def test_mine_fit_evaluate_on_photographs(arch, tiny_root, tmp_path, photos):
    model = str(ensure_tiny_checkpoint(arch, tiny_root))
    assert len({p.size for p in photos}) > 1

    # 1. Mine: a generic VQA file (phrase answers), at the miner's default batch size.
    vqa = bf.vqa_jsonl(tmp_path / "vqa", photos)
    cfg = MineConfig(model=model, source=str(vqa), out=str(tmp_path / "mined"), n=4, steps=2, iig_filter="none")
    assert cfg.batch_size > len(photos)  # one chunk holding every size
    pairs = load_from_disk(str(mine_pairs(cfg, progress=False)))
    assert len(pairs) >= 1
    for row in pairs:  # never a pair whose rejected answer the verifier accepts
        assert not is_correct(row["rejected"][0]["content"][0]["text"], row["answer"], row["answer_type"])

    # 2. Fit: those pairs + online prompts from POPE's own files and the VQA file; validated on one POPE file.
    pope_dir = tmp_path / "pope"
    pope = {s: bf.pope_github(pope_dir, photos, s) for s in POPE_SUBSETS}
    image_root = str(pope_dir / "val2014")
    pope_source = {
        "class_path": "mbpo_lit.data.benchmarks.Pope",
        "init_args": {"path": str(pope["adversarial"]), "image_root": image_root},
    }
    vqa_source = {"class_path": "mbpo_lit.data.sources.Records", "init_args": {"path": str(vqa)}}
    run_dir = tmp_path / "run"
    config = tiny_config(
        model, str(tmp_path / "mined"), run_dir, {"online": [pope_source, vqa_source], "val": pope_source}
    )
    main(["--config", write_config(tmp_path, config)])
    adapter = run_dir / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    after = json.loads((run_dir / "before_after.json").read_text())["after"]

    # 3. Evaluate the written adapter: POPE's three subset files at once, then AMBER's discriminative queries.
    loaded = dict(model=model, adapter=str(adapter), precision="fp32", quantization="4bit")
    pope_all = Pope(str(pope_dir / "coco_pope_*.json"), image_root=image_root)
    result = evaluate_model(EvalConfig(data=pope_all, out=str(tmp_path / "pope.json"), **loaded))
    assert set(result["pope_by_type"]) == set(POPE_SUBSETS)
    for subset in result["pope_by_type"].values():
        assert {"accuracy", "precision", "recall", "f1", "yes_ratio"} <= set(subset) and subset["n"] == 2 * len(photos)
    # The adapter read back by the evaluator answers as the trained policy did at the end of fit.
    assert result["pope_by_type"]["adversarial"]["accuracy"] == after["pope"]["accuracy"]
    amber = Amber(str(bf.amber(tmp_path / "amber", photos)), image_root=str(tmp_path / "amber" / "image"))
    result = evaluate_model(EvalConfig(data=amber, out=str(tmp_path / "amber.json"), **loaded))
    assert set(result["amber_by_type"]) == {"existence", "attribute", "relation"}
    assert json.loads((tmp_path / "amber.json").read_text())["amber"]["n"] == result["amber"]["n"] > 0
