"""Inference inputs: expand image files, folders, globs and video files; read them as RGB frames.

:func:`expand_inputs` turns command-line specs into an ordered list of :class:`InputItem`
(``kind`` ``"image"`` or ``"video"``, chosen by file extension); :func:`read_image` and
:func:`iter_video` read them, raising :class:`BadInputError` that names the file.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..data.images import ImageDecodeError, decode_image_file

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".gif",
)
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
_GLOB_CHARS = ("*", "?", "[")


class BadInputError(ValueError):
    """An input path that does not exist, matches nothing, or cannot be decoded."""


@dataclass(frozen=True)
class InputItem:
    """One input file: ``path``, ``kind`` (``"image"`` or ``"video"``) and a unique output
    ``name`` (:func:`output_names`)."""

    path: str
    kind: str
    name: str


def input_kind(path: str) -> str | None:
    """``"image"``, ``"video"`` or ``None`` from the extension of ``path`` (case-insensitive)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def _expand_one(spec: str) -> list[str]:
    """Files named by one spec: a file, a folder (its image/video files, sorted, not recursive),
    or a glob pattern (``**`` recurses). Raises :class:`BadInputError` naming the spec."""
    if os.path.isdir(spec):
        names = sorted(os.listdir(spec))
        files = [os.path.join(spec, n) for n in names if input_kind(n) is not None]
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            raise BadInputError(
                f"folder {spec} holds no image or video files "
                f"(extensions {IMAGE_EXTENSIONS + VIDEO_EXTENSIONS})"
            )
        return files
    if os.path.isfile(spec):
        return [spec]
    if any(c in spec for c in _GLOB_CHARS):
        files = sorted(f for f in glob.glob(spec, recursive=True) if os.path.isfile(f))
        files = [f for f in files if input_kind(f) is not None]
        if not files:
            raise BadInputError(f"glob pattern {spec!r} matches no image or video file")
        return files
    raise BadInputError(f"input not found: {spec}")


def expand_inputs(specs: Sequence[str], *, skip_bad: bool = False) -> list[InputItem]:
    """Expand files, folders and globs into :class:`InputItem` s, in the order given.

    A file whose extension is neither an image nor a video one is read as an image (so that
    unusual extensions still work; a decoding failure names it later). With ``skip_bad``, specs
    that exist nowhere are skipped with a warning instead of raising.
    """
    paths: list[str] = []
    for spec in specs:
        try:
            paths.extend(_expand_one(spec))
        except BadInputError as exc:
            if not skip_bad:
                raise
            print(f"warning: skipping input: {exc}")
    unique = list(dict.fromkeys(paths))  # drop repeats, keep order
    names = output_names(unique)
    return [InputItem(path=p, kind=input_kind(p) or "image", name=n) for p, n in zip(unique, names)]


def output_names(paths: Sequence[str]) -> list[str]:
    """A unique, stable output name per path: the path without its extension, relative to the
    folder common to all ``paths`` (``/`` separated; the stem alone when all share one folder).
    Two files differing only by extension keep it (``a.jpg`` -> ``a_jpg``); a name still taken
    gets ``-2``, ``-3``... (never one another path already has)."""
    if not paths:
        return []
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    root = os.path.commonpath(folders)
    rel = [os.path.relpath(os.path.abspath(p), root).replace(os.sep, "/") for p in paths]
    stems = [os.path.splitext(r)[0] for r in rel]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    wanted = [s if counts[s] == 1 else r.replace(".", "_") for s, r in zip(stems, rel)]
    taken: set[str] = set()
    reserved = set(wanted)
    names = []
    for name in wanted:
        final, n = name, 1
        while final in taken or (final != name and final in reserved):
            n += 1
            final = f"{name}-{n}"
        taken.add(final)
        names.append(final)
    return names


def read_image(path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB (gray and alpha images converted); raises naming ``path``."""
    try:
        return decode_image_file(path)
    except FileNotFoundError as exc:
        raise BadInputError(str(exc)) from None
    except ImageDecodeError as exc:
        raise BadInputError(str(exc)) from None


@dataclass(frozen=True)
class VideoInfo:
    """``fps`` (frames per second; 0 when the file does not say) and ``num_frames`` (the file's
    count, possibly approximate; 0 when unknown)."""

    fps: float
    num_frames: int


def video_info(path: str) -> VideoInfo:
    """Frame rate and frame count of a video file; raises naming ``path`` if it cannot open."""
    capture = _open_video(path)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        capture.release()
    return VideoInfo(fps=fps if fps > 0 else 0.0, num_frames=max(count, 0))


def _open_video(path: str) -> cv2.VideoCapture:
    if not os.path.isfile(path):
        raise BadInputError(f"video not found: {path}")
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        capture.release()
        raise BadInputError(f"cannot open video (corrupt or unsupported codec): {path}")
    return capture


def iter_video(path: str) -> Iterator[np.ndarray]:
    """Frames of a video file as ``[H, W, 3]`` uint8 RGB; raises naming ``path`` if the file
    cannot be opened or yields no frame, and warns (stderr) when decoding stops before the
    frame count of its header (a truncated file)."""
    capture = _open_video(path)
    declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    count = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            count += 1
            yield np.ascontiguousarray(bgr[..., ::-1])
    finally:
        capture.release()
    if count == 0:
        raise BadInputError(f"video has no decodable frame: {path}")
    if count < declared:
        print(
            f"warning: {path}: decoding stopped after {count} of the {declared} frames its header "
            "declares (truncated or corrupt file); the frames after it are missing",
            file=sys.stderr,
        )
