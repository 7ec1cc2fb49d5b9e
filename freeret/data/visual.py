"""What an item's visual path holds: one image, or a video clip sampled to a fixed number of frames.

A clip is a directory of frame images (sorted by name) or a video file; MMEB-V2's video tasks
sample 8 frames per clip, uniformly (the centre of 8 equal segments). Frames enter the prompt
as consecutive images, which every supported family accepts.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageSequence

from freeret.data.images import open_image
from freeret.errors import DataError

CLIP_FRAMES = 8
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
ANIMATED_SUFFIXES = (".gif",)


def is_clip(path: str | None) -> bool:
    """Whether ``path`` names a video clip (a frame folder or a video file) rather than one image."""
    if not path:
        return False
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES


def sample_indices(total: int, n: int = CLIP_FRAMES) -> list[int]:
    """``n`` frame indices at the centres of ``n`` equal segments (all frames when there are fewer)."""
    if total <= 0:
        raise DataError("video clip has no frames")
    if total <= n:
        return list(range(total))
    return [int((i + 0.5) * total / n) for i in range(n)]


def _rgb(img: Image.Image) -> Image.Image:
    return img.convert("RGB")


def _av(path: Path | str):
    try:
        import av  # optional: pip install av
    except ImportError as exc:
        raise DataError(f"{path}: reading video files needs PyAV (pip install av), or give the clip as a folder of frames") from exc
    return av


def _video_frames(path: Path, n: int) -> list[Image.Image]:
    wanted = set(sample_indices(frame_total(str(path)), n))
    with _av(path).open(str(path)) as container:  # frames decode in sequence; only the sampled ones become images
        frames = [f.to_image() for i, f in enumerate(container.decode(video=0)) if i in wanted]
    return [_rgb(f) for f in frames]


def load_clip(path: str, n: int = CLIP_FRAMES) -> list[Image.Image]:
    """``n`` uniformly sampled RGB frames of a clip."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise DataError(f"clip folder {p} holds no frame images ({', '.join(FRAME_SUFFIXES)})")
        return [open_image(str(files[i])) for i in sample_indices(len(files), n)]
    if p.suffix.lower() in ANIMATED_SUFFIXES:
        with Image.open(p) as img:
            frames = [_rgb(f) for f in ImageSequence.Iterator(img)]
        return [frames[i] for i in sample_indices(len(frames), n)]
    if not p.exists():
        raise DataError(f"video clip {p} does not exist")
    return _video_frames(p, n)


def frame_count(path: str | None, n: int = CLIP_FRAMES) -> int:
    """How many images an item's visual puts in its prompt (0 without one).

    Every prompt render asks; a clip's length is counted once per file version (a video is decoded to count).
    """
    if not path:
        return 0
    if not is_clip(path):
        return 1
    return len(sample_indices(frame_total(path), n))


def frame_total(path: str) -> int:
    """All frames of a clip, counted once per file version (mtime and size)."""
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        raise DataError(f"video clip {path} does not exist") from None
    return _clip_length(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=65536)
def _clip_length(path: str, mtime_ns: int, size: int) -> int:
    """Frames in a clip: a folder's frame files, else the decoded frames of an animated image or video file."""
    p = Path(path)
    if p.is_dir():
        return sum(1 for f in p.iterdir() if f.suffix.lower() in FRAME_SUFFIXES)
    if p.suffix.lower() in ANIMATED_SUFFIXES:
        with Image.open(p) as img:
            return int(getattr(img, "n_frames", 1))
    with _av(path).open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def load_visual(path: str) -> list[Image.Image]:
    """The images one item contributes: a clip's sampled frames, or the single image."""
    if is_clip(path):
        return load_clip(path)
    return [load_image(path)]


def load_image(path: str) -> Image.Image:
    """Open an image as 8-bit RGB, guarded and resized as in :func:`freeret.data.images.open_image`."""
    return open_image(path)
