"""CHAIR's data: COCO images to describe, and the object mentions of a caption.

CHAIR (Rohrbach et al., 2018, "Object Hallucination in Image Captioning") scores a free-form description by the
objects it names that the image's COCO instance annotations do not hold. `CocoChair` reads COCO's own instances
file as description records of this library's schema; `ObjectMentions` finds the category names a caption uses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from mbpo_lit.core.answers import word_forms
from mbpo_lit.data.lazy import LazyRecords, reference
from mbpo_lit.data.sources import Record, RecordSource, Skipped, SourceError

# Words that name a COCO category besides its own name (and their simple plurals), kept small: the usual
# words for people, and short names of long categories. A caption's words are matched longest first, so "hot
# dog" is a hot dog and not a dog, "teddy bear" not a bear, "dining table" one table.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "woman", "boy", "girl", "child", "kid", "guy", "lady", "people"),
    "bicycle": ("bike",),
    "motorcycle": ("motorbike",),
    "airplane": ("plane", "aeroplane", "jet", "aircraft"),
    "couch": ("sofa",),
    "tv": ("television",),
    "dining table": ("table",),
    "cell phone": ("phone", "cellphone", "smartphone"),
    "sports ball": ("ball",),
    "tennis racket": ("racket", "racquet"),
    "donut": ("doughnut",),
    "hair drier": ("hair dryer",),
    "refrigerator": ("fridge",),
    "potted plant": ("houseplant",),
    "handbag": ("purse",),
    "cup": ("mug",),
}


class ObjectMentions:
    """Object names found in free text: each category by its name or a synonym, in simple plural or singular
    form ("two dogs", "a man and a woman" -> ["dog", "person", "person"]), one mention per occurrence, longest
    names first. A negated mention still counts ("there is no dog" mentions a dog), as in CHAIR.
    """

    def __init__(self, names: Sequence[str], synonyms: dict[str, Sequence[str]] | None = None):
        surfaces = [(name, name) for name in names]
        surfaces += [(s, name) for name, extra in (synonyms or {}).items() if name in names for s in extra]
        self.surfaces = sorted(
            ((tuple(word_forms(w) for w in surface.lower().split()), name) for surface, name in surfaces),
            key=lambda x: -len(x[0]),
        )

    def __call__(self, text: str) -> list[str]:
        said = re.findall(r"[a-z]+", str(text).lower())
        out, i = [], 0
        while i < len(said):
            for forms, name in self.surfaces:
                if i + len(forms) <= len(said) and all(said[i + j] in f for j, f in enumerate(forms)):
                    out.append(name)
                    i += len(forms)
                    break
            else:
                i += 1
        return out


class CocoChair(RecordSource):
    """COCO images to describe, scored by CHAIR against COCO's instance annotations.

    Reads COCO's instances file (instances_val2014.json: images [{id, file_name}], annotations [{image_id,
    category_id}], categories [{id, name}]) as description records: `question` the prompt, `objects` the
    category names present, `answer` those names joined (for reference only: CHAIR scores descriptions).
    `mentions` finds category names in a caption (see `ObjectMentions` and `COCO_SYNONYMS`). An image whose
    file is missing or unreadable, or whose annotations name an unknown category, is skipped and listed.

    Args:
        annotations: path of the instances file.
        image_root: folder of the images (default: the annotations file's folder).
        question: the prompt.
        n: at most this many images (None: all 40,504 of val2014; CHAIR is usually reported on 500).
        spread: take n images spread evenly over the file instead of the first n.
        synonyms: extra names per category, on top of `COCO_SYNONYMS` (e.g. {"couch": ["settee"]}).
    """

    def __init__(
        self,
        annotations: str,
        image_root: str | None = None,
        question: str = "Please describe this image in detail.",
        n: int | None = None,
        spread: bool = False,
        synonyms: dict[str, list[str]] | None = None,
    ):
        if n is not None and n < 1:
            raise SourceError(f"n={n}: must be >= 1 (or None for all images)")
        self.annotations, self.image_root, self.question = annotations, image_root, question
        self.n, self.spread, self.synonyms = n, spread, dict(synonyms or {})
        self._mentions: ObjectMentions | None = None

    def __str__(self) -> str:
        return self.annotations

    def _read(self) -> dict:
        path = Path(self.annotations).expanduser()
        if not path.is_file():
            raise SourceError(f"annotations {self.annotations!r} does not exist (COCO's instances_*.json)")
        try:
            data = json.loads(path.read_text())
            if not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
                raise ValueError("needs the lists images, annotations and categories")
        except (ValueError, AttributeError) as err:
            raise SourceError(f"{self.annotations}: not a COCO instances file: {err}") from err
        return data

    def _parser(self, categories: list[dict]) -> ObjectMentions:
        names = [str(c["name"]) for c in categories]
        extra = {k: (*COCO_SYNONYMS.get(k, ()), *self.synonyms.get(k, ())) for k in {*COCO_SYNONYMS, *self.synonyms}}
        return ObjectMentions(names, extra)

    def load(self) -> tuple[LazyRecords, list[Skipped]]:
        data = self._read()
        categories = {c["id"]: str(c["name"]) for c in data["categories"]}
        self._mentions = self._parser(data["categories"])
        present: dict = {}
        for a in data["annotations"]:
            present.setdefault(a.get("image_id"), []).append(a.get("category_id"))
        root = Path(self.image_root) if self.image_root else Path(self.annotations).expanduser().parent
        images = data["images"]
        n = len(images) if self.n is None else min(self.n, len(images))
        records: list[Record] = []
        skipped: list[Skipped] = []
        for i in range(n) if not self.spread else sorted({k * len(images) // n for k in range(n)}):
            info = images[i]
            rid = str(info.get("id", i))
            try:
                unknown = sorted({c for c in present.get(info.get("id"), []) if c not in categories}, key=str)
                if unknown:
                    raise ValueError(f"annotations name unknown category ids {unknown}")
                if not info.get("file_name"):
                    raise ValueError("no file_name")
                try:
                    image = reference(str(info["file_name"]), root, self.annotations)  # decoded when used
                except Exception as err:  # noqa: BLE001 - any failure to open it is this record's reason
                    raise ValueError(f"unreadable image: {err}") from err
            except ValueError as err:
                skipped.append({"index": i, "id": rid, "reason": str(err)})
                continue
            objects = sorted({categories[c] for c in present.get(info.get("id"), [])})
            records.append(
                Record(
                    image=image,
                    question=self.question,
                    answer=", ".join(objects),
                    answer_type="description",
                    id=rid,
                    source_index=i,
                    family="describe",
                    group="",
                    objects=objects,
                )
            )
        return LazyRecords(records), skipped

    def mentions(self, text: str) -> list[str]:
        """COCO category names mentioned in `text`, one per occurrence."""
        if self._mentions is None:
            self._mentions = self._parser(self._read()["categories"])
        return self._mentions(text)
