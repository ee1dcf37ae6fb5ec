"""Small local copies of the public datasets the recipes name, in each dataset's own published layout, with
real photographs of mixed sizes: what a user downloads, without the download. Each layout is read by its class
of `mbpo_lit.data.benchmarks` (`Pope`, `Amber`, `AOKVQA`, `VQAv2`) or `mbpo_lit.data.suites` (`MMStar`,
`MMBench`, `AI2D`, `MME`: parquet files with the images embedded, as their hub copies are), COCO's instances by
`CocoChair`, the generic VQA file by `Records`."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, Features, Image, Sequence, Value


def pope_github(root: Path, photos, category: str = "adversarial") -> Path:
    """POPE's own files (github.com/RUCAIBox/POPE): jsonl lines {question_id, image, text, label}, images by
    file name in a folder, the category in the file name (read by `Pope`)."""
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
    """lmms-lab/POPE's layout (split test): id, question_id, question, answer, image_source, image, category
    (read by `Pope`)."""
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
    difficult_direct_answer, rationales, image (read by `AOKVQA`)."""
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
    """VQAv2's layout on the hub (lmms-lab/VQAv2, parquet, splits validation / testdev / test; the same columns
    as HuggingFaceM4/VQAv2's loading script gave): question_type, multiple_choice_answer, answers, image_id,
    answer_type, question_id, question, image (read by `VQAv2`)."""
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


# AMBER's discriminative queries for four photographs (astronaut, coffee, cat, rocket): (type, query, truth),
# as AMBER words them. AMBER's annotations.json labels some relation negatives "relation".
AMBER_QUERIES = [
    (1, "discriminative-hallucination", "Is there a person in this image?", "yes"),
    (1, "discriminative-hallucination", "Is there a dog in this image?", "no"),
    (2, "discriminative-attribute-state", "Is the cup white in this image?", "yes"),
    (2, "discriminative-attribute-number", "Are there two cups in this image?", "no"),
    (3, "discriminative-attribute-action", "Does the cat sleep in this image?", "no"),
    (3, "discriminative-relation", "Are the cat and the blanket touching?", "yes"),
    (4, "relation", "Are the rocket and the tower touching?", "no"),
    (4, "discriminative-hallucination", "Is there a rocket in this image?", "yes"),
]


def amber(root: Path, photos) -> Path:
    """AMBER's repository layout (github.com/junyangwang0410/AMBER): data/annotations.json, a JSON list of
    {id, type, truth} (generative entries first, ids from 1, truth a list of objects; discriminative ids from
    1005, truth "yes"/"no"), data/query/query_discriminative.json, a JSON list of {id, image, query}, and
    data/query/query_all.json with the generative queries too; the images (AMBER_<k>.jpg) are a separate
    download, here in image/. Returns the path of query_discriminative.json (read by `Amber`)."""
    images, data = root / "image", root / "data"
    (data / "query").mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    annotations, generative = [], []
    for k, photo in enumerate(photos, 1):
        photo.save(images / f"AMBER_{k}.jpg")
        annotations.append({"id": k, "type": "generative", "truth": ["person"], "hallu": ["dog"]})
        generative.append({"id": k, "image": f"AMBER_{k}.jpg", "query": "Describe this image."})
    queries = []
    for j, (k, kind, query, truth) in enumerate(AMBER_QUERIES):
        annotations.append({"id": 1005 + j, "type": kind, "truth": truth})
        queries.append({"id": 1005 + j, "image": f"AMBER_{k}.jpg", "query": query})
    (data / "annotations.json").write_text(json.dumps(annotations, indent=4))
    (data / "query" / "query_discriminative.json").write_text(json.dumps(queries, indent=4))
    (data / "query" / "query_all.json").write_text(json.dumps(generative + queries, indent=4))
    return data / "query" / "query_discriminative.json"


# COCO category ids as in instances_val2014.json (a subset).
COCO_CATEGORIES = [
    (1, "person", "person"),
    (5, "airplane", "vehicle"),
    (17, "cat", "animal"),
    (18, "dog", "animal"),
    (47, "cup", "kitchen"),
    (58, "hot dog", "food"),
    (67, "dining table", "furniture"),
    (88, "teddy bear", "indoor"),
]
# The objects of each photograph (astronaut, coffee, cat, rocket), by category id: the rocket has none.
COCO_OBJECTS = [[1, 1], [47, 67], [17], []]


def coco_instances(root: Path, photos) -> Path:
    """COCO's instances_val2014.json layout: info, licenses, images [{id, file_name, width, height, ...}],
    annotations [{id, image_id, category_id, bbox, area, iscrowd, segmentation}], categories [{supercategory,
    id, name}]; images COCO_val2014_<id>.jpg in val2014/. Returns the annotations file's path."""
    images = root / "val2014"
    images.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {
        "info": {"description": "COCO 2014 Dataset"},
        "licenses": [{"id": 1, "name": "Attribution License", "url": "http://creativecommons.org/licenses/by/2.0/"}],
        "images": [],
        "annotations": [],
        "categories": [{"supercategory": s, "id": i, "name": n} for i, n, s in COCO_CATEGORIES],
    }
    for k, (photo, objects) in enumerate(zip(photos, COCO_OBJECTS)):
        image_id = 100 + k
        name = f"COCO_val2014_{image_id:012d}.jpg"
        photo.save(images / name)
        data["images"].append(
            {"license": 1, "file_name": name, "height": photo.height, "width": photo.width, "id": image_id}
        )
        for category in objects:
            data["annotations"].append(
                {
                    "id": len(data["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [0.0, 0.0, 10.0, 10.0],
                    "area": 100.0,
                    "iscrowd": 0,
                    "segmentation": [[0.0, 0.0, 10.0, 0.0, 10.0, 10.0]],
                }
            )
    path = root / "annotations" / "instances_val2014.json"
    path.write_text(json.dumps(data))
    return path


def vqa_jsonl(root: Path, photos) -> Path:
    """A generic close-ended VQA file: jsonl lines {image, question, answer}, images by relative path, no
    answer_type column (given by `Records(answer_type=...)`)."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    qa = [
        ("What is the person wearing?", "spacesuit"),
        ("What is in the cup?", "coffee"),
        ("What animal is this?", "cat"),
        ("What is launching?", "rocket"),
    ]
    lines = []
    for i, (photo, (q, a)) in enumerate(zip(photos, qa)):
        photo.save(images / f"{i}.jpg")
        lines.append({"image": f"images/{i}.jpg", "question": q, "answer": a})
    path = root / "vqa.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def write_parquet(path: Path, rows: list[dict], features: Features) -> Path:
    """`rows` as one parquet file with the images' bytes embedded, as a hub copy's data/<split>-*.parquet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows, features=features).to_parquet(str(path))
    return path


# MMStar's rows (photo, question with its options inline, answer, category, l2_category), as MMStar words them.
MMSTAR_ROWS = [
    (0, "What is the person wearing?\nOptions: A: a spacesuit, B: a swimsuit, C: a kimono, D: a tuxedo", "A")
    + ("coarse perception", "image scene and topic"),
    (1, "What is in the cup?\nOptions: A: tea, B: coffee, C: milk, D: soup", "B", "fine-grained perception")
    + ("recognition",),
    (2, "How many cats are there?\nOptions: A: 3, B: 2, C: 1, D: 0", "C", "fine-grained perception")
    + ("object counting",),
    (3, "What is launching?\nOptions: A: a plane, B: a balloon, C: a bird, D: a rocket", "D", "math", "geometry"),
    (0, "Where is the flag?\nOptions: A: on the left, B: on the right, C: behind the person, D: nowhere", "C")
    + ("coarse perception", "image scene and topic"),
]


def mmstar(root: Path, photos) -> Path:
    """Lin-Chen/MMStar's mmstar.parquet (split val): index, question (options inline), image, answer, category,
    l2_category, meta_info {source, split, image_path} (read by `MMStar`)."""
    rows = [
        {"index": i, "question": q, "image": photos[k], "answer": a, "category": c, "l2_category": l2}
        | {"meta_info": {"source": "MMBench", "split": "val", "image_path": f"images/{i}.jpg"}}
        for i, (k, q, a, c, l2) in enumerate(MMSTAR_ROWS)
    ]
    meta = {"source": Value("string"), "split": Value("string"), "image_path": Value("string")}
    columns = {"index": Value("int64"), "question": Value("string"), "image": Image(), "answer": Value("string")}
    columns |= {"category": Value("string"), "l2_category": Value("string"), "meta_info": meta}
    return write_parquet(root / "mmstar.parquet", rows, Features(columns))


# MMBench's questions: (photo, hint, question, options, right option, category, L2-category); each appears once per
# circular shift of its options (index i + k * 1,000,000), the right letter shifting with them.
MMBENCH_QUESTIONS = [
    (0, None, "What is the person wearing?", ["a spacesuit", "a swimsuit", "a kimono", "a tuxedo"], 0, "attribute")
    + ("finegrained_perception (instance-level)",),
    (2, "The cat is on a blanket.", "Is the cat sleeping?", ["yes", "no"], 0, "action_recognition")
    + ("finegrained_perception (instance-level)",),
    (1, "nan", "What is in the cup?", ["tea", "coffee", "milk"], 1, "image_topic", "coarse_perception"),
]


def mmbench(root: Path, photos) -> Path:
    """lmms-lab/MMBench, config en, split dev: index (a string), question, hint ("nan" or empty when none),
    answer, A, B, C, D (None past the question's options), category, image, source, L2-category, comment, split;
    main rows first, then the shifted copies (read by `MMBench`)."""
    rows = []
    for k in range(4):
        for i, (p, hint, q, options, right, category, l2) in enumerate(MMBENCH_QUESTIONS):
            if k < len(options):
                shifted = options[k:] + options[:k]
                rows.append(
                    {
                        "index": str(i + k * 1_000_000),
                        "question": q,
                        "hint": hint,
                        "answer": "ABCD"[(right - k) % len(options)],
                    }
                    | {c: (shifted[j] if j < len(shifted) else None) for j, c in enumerate("ABCD")}
                    | {"category": category, "image": photos[p], "source": "MMBench", "L2-category": l2}
                    | {"comment": None, "split": "dev"}
                )
    features = {c: Value("string") for c in rows[0]} | {"image": Image()}
    return write_parquet(root / "en" / "dev-00000-of-00001.parquet", rows, Features(features))


def ai2d(root: Path, photos) -> Path:
    """lmms-lab/ai2d (split test): question, options (the options' texts), answer (the right one's index as a
    string), image (read by `AI2D`)."""
    qa = [
        ("What does the diagram show?", ["a person", "a planet", "a leaf"], "0"),
        ("Which stage comes after the egg?", ["adult", "larva", "pupa", "egg"], "1"),
        ("What is the animal?", ["dog", "bird", "cat", "fish"], "2"),
        ("Which part gives thrust?", ["nose cone", "fins", "payload", "engine"], "3"),
    ]
    rows = [{"question": q, "options": o, "answer": a, "image": photo} for photo, (q, o, a) in zip(photos, qa)]
    features = {"question": Value("string"), "options": Sequence(Value("string")), "answer": Value("string")}
    return write_parquet(root / "ai2d.parquet", rows, Features(features | {"image": Image()}))


# MME's questions: (photo, sub-task, question without " Please answer yes or no.", answer); two per image.
MME_ROWS = [
    (0, "existence", "Is there a person in this image?", "Yes"),
    (0, "existence", "Is there a dog in this image?", "No"),
    (2, "existence", "Is there a cat in this image?", "Yes"),
    (2, "existence", "Is there a giraffe in this image?", "No"),
    (1, "count", "Is there one cup in the image?", "Yes"),
    (1, "count", "Are there three cups in the image?", "No"),
    (3, "code_reasoning", "Does the rocket point up?", "Yes"),
    (3, "code_reasoning", "Does the rocket point down?", "No"),
]


def mme(root: Path, photos) -> Path:
    """lmms-lab/MME (split test): question_id (the image, "<sub-task>/<file>", shared by its two questions),
    image, question, answer ("Yes" / "No"), category (read by `MME`)."""
    rows = [
        {"question_id": f"{task}/{k:04d}.jpg", "image": photos[k], "question": f"{q} Please answer yes or no."}
        | {"answer": a, "category": task}
        for k, task, q, a in MME_ROWS
    ]
    features = {"question_id": Value("string"), "image": Image(), "question": Value("string")}
    features |= {"answer": Value("string"), "category": Value("string")}
    return write_parquet(root / "data" / "test-00000-of-00001.parquet", rows, Features(features))


# What `Records(format=...)` read from each layout above before the layouts became classes (data/benchmarks.py),
# record by record: `RECORD_FIELDS`, the photograph of each record, a record's keys, and the rows skipped.
# pope_github: the "popular" file; vqav2: with answer_types [yes_no, number]; amber: data/query/query_all.json.
RECORD_FIELDS = ("id", "source_index", "question", "answer", "answer_type", "family", "group", "choices", "amber_type")
_KEYS = ["image", "question", "answer", "answer_type", "id", "source_index", "family", "group"]
_AOKVQA_PROMPT = (
    "What is in the picture?\nA. a person\nB. a cup of coffee\nC. a cat\nD. a rocket\n"
    "Answer with the option's letter from the given choices directly."
)
_CHOICES = ["a person", "a cup of coffee", "a cat", "a rocket"]
# AMBER's queries' (family, group); the group is also the record's amber_type.
_AMBER = [("existence", "existence")] * 2 + [
    ("attribute-state", "attribute"),
    ("attribute-number", "attribute"),
    ("attribute-action", "attribute"),
    ("relation", "relation"),
    ("relation", "relation"),
    ("existence", "existence"),
]
_GENERATIVE = "a generative query (AMBER's generative task is not scored by this evaluator)"
_PHRASE = "answer_type 'phrase' not in answer_types=['yes_no', 'number']"
RECORDS_BEFORE = {
    "pope_github": (
        [
            (str(k + 1), k, f"Is there a {('person', 'dog')[k % 2]} in the image?", ("yes", "no")[k % 2])
            + ("yes_no", "existence", "popular", None, None)
            for k in range(8)
        ],
        [0, 0, 1, 1, 2, 2, 3, 3],
        _KEYS,
        [],
    ),
    "pope_hub": (
        [
            ("1", 0, "Is there a person in the image?", "yes", "yes_no", "existence", "adversarial", None, None),
            ("2", 1, "Is there a cup in the image?", "no", "yes_no", "existence", "popular", None, None),
            ("3", 2, "Is there a cat in the image?", "yes", "yes_no", "existence", "random", None, None),
            ("4", 3, "Is there a car in the image?", "no", "yes_no", "existence", "random", None, None),
        ],
        [0, 1, 2, 3],
        _KEYS,
        [],
    ),
    "aokvqa": (
        [(f"q{k}", k, _AOKVQA_PROMPT, "ABCD"[k], "choice", "choice", "", _CHOICES, None) for k in range(4)],
        [0, 1, 2, 3],
        [*_KEYS, "choices"],
        [],
    ),
    "vqav2": (
        [
            ("100", 0, "Is there a person?", "yes", "yes_no", "yes_no", "", None, None),
            ("101", 1, "How many cups are there?", "1", "number", "number", "", None, None),
            ("103", 3, "Is it night?", "no", "yes_no", "yes_no", "", None, None),
        ],
        [0, 1, 3],
        _KEYS,
        [{"index": 2, "id": "102", "reason": _PHRASE, "filtered": True}],
    ),
    "amber": (
        [
            (str(1005 + j), 4 + j, query, truth, "yes_no", family, group, None, group)
            for j, ((_, _, query, truth), (family, group)) in enumerate(zip(AMBER_QUERIES, _AMBER))
        ],
        [k - 1 for k, *_ in AMBER_QUERIES],
        [*_KEYS, "amber_type"],
        [{"index": k, "id": str(k + 1), "reason": _GENERATIVE, "filtered": True} for k in range(4)],
    ),
}
