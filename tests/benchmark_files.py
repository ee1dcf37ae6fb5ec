"""Small local copies of the public datasets the recipes name, in each dataset's own published layout, with
real photographs of mixed sizes: what a user downloads, without the download."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, Features, Image, Sequence, Value


def pope_github(root: Path, photos, category: str = "adversarial") -> Path:
    """POPE's own files (github.com/RUCAIBox/POPE): jsonl lines {question_id, image, text, label}, images by
    file name in a folder, the category in the file name."""
    images = root / "val2014"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, photo in enumerate(photos):
        name = f"COCO_val2014_{i:012d}.jpg"
        photo.save(images / name)
        lines += [
            {"question_id": 2 * i + 1, "image": name, "text": "Is there a person in the image?", "label": "yes"},
            {"question_id": 2 * i + 2, "image": name, "text": "Is there a dog in the image?", "label": "no"},
        ]
    path = root / f"coco_pope_{category}.json"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def pope_hub(root: Path, photos) -> Path:
    """lmms-lab/POPE's layout (split test): id, question_id, question, answer, image_source, image, category."""
    rows = [
        {
            "id": str(i),
            "question_id": str(i + 1),
            "question": f"Is there a {obj} in the image?",
            "answer": answer,
            "image_source": f"COCO_val2014_{i:012d}",
            "image": photo,
            "category": category,
        }
        for i, (photo, (obj, answer, category)) in enumerate(
            zip(
                photos,
                [
                    ("person", "yes", "adversarial"),
                    ("cup", "no", "popular"),
                    ("cat", "yes", "random"),
                    ("car", "no", "random"),
                ],
            )
        )
    ]
    features = Features({k: Value("string") for k in rows[0] if k != "image"} | {"image": Image()})
    path = root / "pope_hub"
    Dataset.from_list(rows, features=features).save_to_disk(str(path))
    return path


def aokvqa(root: Path, photos) -> Path:
    """HuggingFaceM4/A-OKVQA's layout: question_id, question, choices, correct_choice_idx, direct_answers,
    difficult_direct_answer, rationales, image."""
    rows = [
        {
            "question_id": f"q{i}",
            "question": "What is in the picture?",
            "choices": ["a person", "a cup of coffee", "a cat", "a rocket"],
            "correct_choice_idx": i,
            "direct_answers": ["x"] * 10,
            "difficult_direct_answer": False,
            "rationales": ["because"],
            "image": photo,
        }
        for i, photo in enumerate(photos)
    ]
    features = Features(
        {
            "question_id": Value("string"),
            "question": Value("string"),
            "choices": Sequence(Value("string")),
            "correct_choice_idx": Value("int8"),
            "direct_answers": Sequence(Value("string")),
            "difficult_direct_answer": Value("bool"),
            "rationales": Sequence(Value("string")),
            "image": Image(),
        }
    )
    path = root / "aokvqa"
    Dataset.from_list(rows, features=features).save_to_disk(str(path))
    return path


def vqav2(root: Path, photos) -> Path:
    """HuggingFaceM4/VQAv2's layout: question_type, multiple_choice_answer, answers, image_id, answer_type,
    question_id, question, image."""
    qa = [
        ("is there a", "yes", "yes/no", "Is there a person?"),
        ("how many", "1", "number", "How many cups are there?"),
        ("what color is the", "orange", "other", "What color is the cat?"),
        ("is the", "no", "yes/no", "Is it night?"),
    ]
    rows = [
        {
            "question_type": t,
            "multiple_choice_answer": a,
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": 1}],
            "image_id": i,
            "answer_type": at,
            "question_id": 100 + i,
            "question": q,
            "image": photo,
        }
        for i, (photo, (t, a, at, q)) in enumerate(zip(photos, qa))
    ]
    features = Features(
        {
            "question_type": Value("string"),
            "multiple_choice_answer": Value("string"),
            "answers": [{"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}],
            "image_id": Value("int64"),
            "answer_type": Value("string"),
            "question_id": Value("int64"),
            "question": Value("string"),
            "image": Image(),
        }
    )
    path = root / "vqav2"
    Dataset.from_list(rows, features=features).save_to_disk(str(path))
    return path
