"""Writing a synthetic dataset: who is seen by which camera, which file each image goes to, in parallel."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

from reid.experiments.synthetic.domains import (
    DISTRACTOR_PID,
    DISTRACTOR_STREAM,
    GENERATOR_VERSION,
    IDENTITY_STREAM,
    IMAGE_STREAM,
    JUNK_PID,
    JUNK_STREAM,
    MAX_PID,
    PLAN_STREAM,
    STYLES,
    SUBSETS,
    Camera,
    DomainStyle,
    PersonAttributes,
    get_style,
    make_cameras,
    rng_for,
    sample_identity,
)
from reid.experiments.synthetic.render import render_distractor, render_junk, render_person
from reid.utils.errors import ReIDError
from reid.utils.progress import Progress

logger = logging.getLogger(__name__)

MANIFEST_NAME = "synthetic.json"


# --------------------------------------------------------------------------------------------------
# Planning a dataset: who is seen by which camera, which file each image goes to
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ImageJob:
    """One image to render: everything a worker process needs, nothing random left to decide."""

    file: str                        # subset/name.jpg
    pid: int
    camera: int
    kind: str                        # "person", "distractor" or "junk"
    seed_key: tuple[int, ...]
    attrs: PersonAttributes | None = None


class _Namer:
    """Unique, plausible file names: frame numbers advance along each camera track."""

    def __init__(self, style: DomainStyle, rng: np.random.Generator) -> None:
        self.style, self.rng, self.used = style, rng, set()

    def track(self, pid: int, camera: int, count: int) -> list[str]:
        sequence = int(self.rng.integers(1, 7))
        frame = int(self.rng.integers(0, 200_000))
        names = []
        for _ in range(count):
            frame += int(self.rng.integers(5, 120))
            box = int(self.rng.integers(1, 5))
            name = self.style.file_name(pid, camera, frame, sequence, box)
            while name in self.used:
                frame += 1
                name = self.style.file_name(pid, camera, frame, sequence, box)
            self.used.add(name)
            names.append(name)
        return names


@dataclass(frozen=True)
class _Params:
    """What the manifest records: equal parameters give byte-identical files."""

    style: str
    num_train_ids: int
    num_test_ids: int
    images_per_camera: int
    num_distractors: int
    num_junk: int
    seed: int
    generator_version: int = GENERATOR_VERSION


def _draw_pids(rng: np.random.Generator, num_train: int, num_test: int) -> tuple[list[int], list[int]]:
    """Disjoint sorted train and test ids, scattered over 1..1501 (more if asked for many) as in Market."""
    total = num_train + num_test
    highest = min(MAX_PID, max(1501, 2 * total))
    pids = [int(p) for p in rng.choice(np.arange(1, highest + 1), total, replace=False)]
    return sorted(pids[:num_train]), sorted(pids[num_train:])


def _plan(style: DomainStyle, params: _Params) -> list[_ImageJob]:
    """Every image of the dataset with its file name and seed.

    Train and test identities are disjoint. A test identity is seen by at least two cameras with at
    least two images each; the first image of some of its cameras becomes a query, so every query has
    a gallery match in another camera (and usually one in its own, which evaluation ignores).
    """
    style_id = STYLES.index(style.name)
    rng = rng_for(params.seed, style_id, PLAN_STREAM)
    train_pids, test_pids = _draw_pids(rng, params.num_train_ids, params.num_test_ids)
    namer = _Namer(style, rng)
    jobs: list[_ImageJob] = []
    for pid in train_pids + test_pids:
        is_test = pid in test_pids  # a short list; the loop is not the slow part
        attrs, tracks = _identity(style, params, pid, min_images=2 if is_test else 1)
        query_cameras = [camera for camera in tracks if rng.random() < 0.7] or [min(tracks)]
        for camera, count in tracks.items():
            for shot, name in enumerate(namer.track(pid, camera, count)):
                if not is_test:
                    subset = "bounding_box_train"
                else:
                    subset = "query" if shot == 0 and camera in query_cameras else "bounding_box_test"
                jobs.append(_ImageJob(f"{subset}/{name}", pid, camera, "person",
                                      (params.seed, style_id, IMAGE_STREAM, pid, camera, shot), attrs))

    for kind, pid, tag, count in (("distractor", DISTRACTOR_PID, DISTRACTOR_STREAM, params.num_distractors),
                                  ("junk", JUNK_PID, JUNK_STREAM, params.num_junk)):
        for index in range(count):
            camera = int(rng.integers(1, style.num_cameras + 1))
            name = namer.track(pid, camera, 1)[0]
            jobs.append(_ImageJob(f"bounding_box_test/{name}", pid, camera, kind,
                                  (params.seed, style_id, tag, index)))
    return jobs


def _identity(style: DomainStyle, params: _Params, pid: int,
              min_images: int) -> tuple[PersonAttributes, dict[int, int]]:
    """A person's attributes and how many images each of their cameras took."""
    rng = rng_for(params.seed, STYLES.index(style.name), IDENTITY_STREAM, pid)
    attrs = sample_identity(rng, style)
    low, high = style.cameras_per_identity
    num_cameras = int(rng.integers(low, min(high, style.num_cameras) + 1))
    cameras = sorted(int(c) for c in rng.choice(style.num_cameras, num_cameras, replace=False) + 1)
    counts = [max(min_images, params.images_per_camera + int(rng.integers(-1, 2))) for _ in cameras]
    return attrs, dict(zip(cameras, counts, strict=True))


def _summarise(jobs: list[_ImageJob]) -> dict[str, dict[str, int]]:
    summary = {}
    for subset in SUBSETS:
        chosen = [job for job in jobs if job.file.startswith(subset + "/")]
        summary[subset] = {
            "identities": len({job.pid for job in chosen if job.pid > 0}),
            "images": len(chosen),
            "cameras": len({job.camera for job in chosen}),
            "distractors": sum(job.pid == DISTRACTOR_PID for job in chosen),
            "junk": sum(job.pid == JUNK_PID for job in chosen),
        }
    return summary


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

def _render_job(cameras: list[Camera], dataset_dir: Path, job: _ImageJob) -> None:
    camera = cameras[job.camera - 1]
    rng = rng_for(*job.seed_key)
    if job.kind == "person":
        image = render_person(job.attrs, camera, rng)
    elif job.kind == "distractor":
        image = render_distractor(camera, rng)
    else:
        image = render_junk(camera, rng)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, camera.domain.jpeg_quality])
    if not ok:
        raise ReIDError(f"OpenCV could not encode the synthetic image {dataset_dir / job.file}.")
    (dataset_dir / job.file).write_bytes(encoded.tobytes())


def _limit_worker_threads() -> None:
    cv2.setNumThreads(1)  # the pool already uses every core it was given


def _write_images(jobs: list[_ImageJob], cameras: list[Camera], dataset_dir: Path, workers: int) -> None:
    render = partial(_render_job, cameras, dataset_dir)
    progress = Progress(f"render {dataset_dir.name}", len(jobs), logger=logger)
    if workers == 1:
        for job in jobs:
            render(job)
            progress.update()
    else:
        with Pool(workers, initializer=_limit_worker_threads) as pool:
            for _ in pool.imap_unordered(render, jobs, chunksize=32):
                progress.update()
    progress.close()


def read_manifest(dataset_dir: str | Path) -> dict | None:
    """The generation record of a synthetic dataset folder, or None if there is none readable."""
    try:
        return json.loads((Path(dataset_dir) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def _is_up_to_date(dataset_dir: Path, params: _Params) -> bool:
    manifest = read_manifest(dataset_dir)
    if manifest is None or manifest.get("params") != asdict(params):
        return False
    # A matching record is not enough if someone deleted images since.
    for subset, counts in manifest.get("subsets", {}).items():
        folder = dataset_dir / subset
        if not folder.is_dir() or sum(1 for _ in folder.glob("*.jpg")) != counts["images"]:
            return False
    return True


def _validate(style: DomainStyle, params: _Params, workers: int) -> None:
    minimums = {"num_train_ids": 1, "num_test_ids": 1, "images_per_camera": 1, "num_distractors": 0,
                "num_junk": 0, "seed": 0, "workers": 1}
    values = {**asdict(params), "workers": workers}
    for name, minimum in minimums.items():
        if values[name] < minimum:
            raise ReIDError(f"Synthetic dataset option {name} must be at least {minimum}, "
                            f"got {values[name]}.")
    if params.num_train_ids + params.num_test_ids > MAX_PID:
        raise ReIDError(f"At most {MAX_PID} synthetic identities fit four-digit ids; asked for "
                        f"{params.num_train_ids} train + {params.num_test_ids} test.")
    if not style.has_gallery_extras and (params.num_distractors or params.num_junk):
        raise ReIDError(f"The {style.name} layout has no distractor or junk gallery images (pid 0000 / -1); "
                        "leave num_distractors and num_junk unset for it.")


def generate_synthetic(style: str, root: str | Path, *, num_train_ids: int = 150, num_test_ids: int = 100,
                       images_per_camera: int = 4, num_distractors: int | None = None,
                       num_junk: int | None = None, seed: int = 0, workers: int | None = None,
                       force: bool = False) -> Path:
    """Write a synthetic dataset in the layout of ``style`` under ``root`` and return its folder.

    ``images_per_camera`` is the mean number of images per (identity, camera); test identities get
    at least two. ``num_distractors`` / ``num_junk`` default to the style's own (none for duke).
    A folder whose ``synthetic.json`` records the same parameters is left alone unless ``force``;
    otherwise only its three subset folders are replaced.
    """
    domain = get_style(style)
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    params = _Params(
        style=domain.name, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
        images_per_camera=images_per_camera,
        num_distractors=domain.default_distractors if num_distractors is None else num_distractors,
        num_junk=domain.default_junk if num_junk is None else num_junk, seed=seed,
    )
    _validate(domain, params, workers)
    dataset_dir = Path(root) / domain.folder
    if not force and _is_up_to_date(dataset_dir, params):
        logger.info("%s is up to date (%s); skipping generation.", dataset_dir, MANIFEST_NAME)
        return dataset_dir

    jobs = _plan(domain, params)
    # The manifest goes first and comes back last, so an interrupted run is never mistaken for a finished one.
    (dataset_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for subset in SUBSETS:
        if (dataset_dir / subset).exists():
            shutil.rmtree(dataset_dir / subset)
        (dataset_dir / subset).mkdir(parents=True)
    _write_images(jobs, make_cameras(domain, seed), dataset_dir, workers)
    manifest = {"generator": __name__, "params": asdict(params), "subsets": _summarise(jobs)}
    (dataset_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return dataset_dir
