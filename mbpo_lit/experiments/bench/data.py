"""The data benchmark: the peak resident memory of reading records whose images are files, as a source's `load()`
reads them (headers checked, pixels not decoded: data/lazy.py), and after a pass that reads every record's fields
and decodes the images of some of them a batch at a time, as training does. A script of its own, so the peak is
this process's alone (the measured numbers are in results/performance.md):

    python -m mbpo_lit.experiments.bench.data --records 50000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

from PIL import Image

JPEG_SIZE = (640, 480)  # COCO's usual size


def rss_mb() -> float:
    """This process's peak resident set size so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_files(root: Path, records: int, images: int) -> Path:
    """`images` distinct 640x480 JPEGs, linked under `records` file names (a record's own file each, as a
    dataset of photographs has), and a jsonl of `records` yes/no questions naming them; returns the jsonl."""
    (root / "images").mkdir()
    for k in range(images):
        noise = Image.effect_noise(JPEG_SIZE, 40 + k % 30).convert("RGB")
        noise.save(root / "images" / f"base{k}.jpg", quality=90)
    with open(root / "data.jsonl", "w") as out:
        for i in range(records):
            os.link(root / "images" / f"base{i % images}.jpg", root / "images" / f"{i}.jpg")
            row = {"image": f"images/{i}.jpg", "question": "Is there a cat?", "answer": "yes" if i % 2 else "no"}
            out.write(json.dumps(row) + "\n")
    return root / "data.jsonl"


def bench_data(n_records: int = 50_000, n_images: int = 500, n_decoded: int = 2_000) -> dict:
    """Peak RSS after loading `n_records` records whose images are JPEG files (`n_images` distinct ones), and
    after a pass over them all that decodes `n_decoded` images in batches of 32."""
    from mbpo_lit.data.sources import Records

    with tempfile.TemporaryDirectory() as tmp:
        path = write_files(Path(tmp), n_records, n_images)
        before = rss_mb()
        started = time.perf_counter()
        records, skipped = Records(str(path), answer_type="yes_no").load()
        load_s = time.perf_counter() - started
        after_load = rss_mb()
        answers = sum(r["answer"] == "yes" for r in records)  # every record's fields, no image
        decoded, last = 0, min(n_decoded, len(records))
        for start in range(0, last, 32):
            batch = [records[i]["image"] for i in range(start, min(start + 32, last))]
            decoded += sum(im.size == JPEG_SIZE for im in batch)
        return {
            "records": len(records),
            "skipped": len(skipped),
            "distinct_images": n_images,
            "yes_answers": answers,
            "load_s": round(load_s, 1),
            "peak_rss_before_load_mb": round(before),
            "peak_rss_after_load_mb": round(after_load),
            "images_decoded_in_pass": decoded,
            "peak_rss_after_pass_mb": round(rss_mb()),
        }


def main(argv: list[str] | None = None) -> dict:
    """Run `bench_data` with the command line's sizes and print its numbers as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000, help="records, each naming its own JPEG file")
    parser.add_argument("--images", type=int, default=500, help="distinct 640x480 JPEGs behind the files")
    parser.add_argument("--decoded", type=int, default=2_000, help="images decoded after loading, 32 at a time")
    args = parser.parse_args(argv)
    result = bench_data(args.records, args.images, args.decoded) | {
        "machine": f"{os.cpu_count()} CPUs, {platform.platform()}"
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
