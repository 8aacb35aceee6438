"""A video as ``flare-nb`` input: pick N sharp, evenly spread frames (OpenCV).

:func:`pick_frames` reads the video once and scores every frame's sharpness as the variance
of its Laplacian (on a grey copy at most :data:`SCORE_SIDE` pixels wide: blur lowers it);
the frames are split into ``n`` equal runs of consecutive frames and the sharpest frame of
each run is kept, so the views are spread over the whole video and each is the least blurred
of its neighbourhood. :func:`extract_frames` writes those frames as PNG files
``frame_000123.png`` (the number is the frame index, counted from 0) into a folder the caller
owns, and ``flare-nb`` goes on with them as with photos.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["VIDEO_EXTENSIONS", "is_video", "sharpness", "pick_frames", "extract_frames"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
SCORE_SIDE = 320


def is_video(path) -> bool:
    """True for a file with a video extension (:data:`VIDEO_EXTENSIONS`)."""
    p = Path(path)
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir()


def sharpness(frame_bgr: np.ndarray) -> float:
    """Variance of the Laplacian of a grey copy of ``frame_bgr`` (at most SCORE_SIDE wide)."""
    import cv2

    g = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY) if frame_bgr.ndim == 3 else frame_bgr
    if g.shape[1] > SCORE_SIDE:
        g = cv2.resize(g, (SCORE_SIDE, max(1, round(g.shape[0] * SCORE_SIDE / g.shape[1]))),
                       interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(g.astype(np.float32), cv2.CV_32F).var())


def _open(path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"{path}: OpenCV cannot open this video (damaged, or a format it cannot decode); "
                         "convert it to .mp4 (H.264) or .avi (MJPG), or pass the frames as photos")
    return cap


def pick_frames(path, n: int) -> tuple[list[int], list[float]]:
    """``(indices of the n chosen frames, sharpness of every frame)``. ValueError naming the
    file when it cannot be read or has fewer than ``n`` frames."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such video: {path}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"--views must be an integer >= 2, got {n!r}")
    cap = _open(path)
    scores = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            scores.append(sharpness(frame))
    finally:
        cap.release()
    if not scores:
        raise ValueError(f"{path}: no frame could be read (damaged, or a format OpenCV cannot decode); "
                         "convert it to .mp4 (H.264) or .avi (MJPG), or pass the frames as photos")
    if len(scores) < n:
        raise ValueError(f"{path} has only {len(scores)} frame(s), fewer than the {n} views asked; "
                         f"pass --views {len(scores)} or less, or a longer video" if len(scores) >= 2 else
                         f"{path} has only {len(scores)} frame; FLARE needs at least 2 views: use a longer video")
    bounds = np.linspace(0, len(scores), n + 1).round().astype(int)
    picks = [int(a + np.argmax(scores[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
    return picks, scores


def extract_frames(path, n: int, folder) -> tuple[list[Path], list[int], list[float]]:
    """Write the ``n`` frames of :func:`pick_frames` as PNG files into ``folder`` (which must
    exist); returns ``(files, frame indices, sharpness of the chosen frames)``."""
    import cv2

    picks, scores = pick_frames(path, n)
    folder = Path(folder)
    wanted = set(picks)
    files = {}
    cap = _open(path)
    try:
        k = 0
        while len(files) < len(wanted):
            ok, frame = cap.read()
            if not ok:
                break
            if k in wanted:
                f = folder / f"frame_{k:06d}.png"
                if not cv2.imwrite(str(f), frame):
                    raise OSError(f"could not write the frame {f}")
                files[k] = f
            k += 1
    finally:
        cap.release()
    if len(files) != len(wanted):
        raise ValueError(f"{path}: frames {sorted(wanted - set(files))} could not be read again (the video "
                         "decodes differently each time); convert it to .mp4 (H.264) or .avi (MJPG)")
    return [files[k] for k in picks], picks, [scores[k] for k in picks]
