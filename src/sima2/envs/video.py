"""Write episodes as annotated GIFs (Pillow) or MP4s (imageio + ffmpeg, when installed).

Frames are upscaled with nearest-neighbour sampling and the instruction (and optionally the current
subgoal or the outcome, on lines of their own after a newline) is drawn in a caption bar above each frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from jaxtyping import UInt8
from PIL import Image, ImageDraw, ImageFont


def annotate_frame(
    frame: UInt8[np.ndarray, "H W 3"], caption: str, scale: int = 4, caption_lines: int = 2
) -> UInt8[np.ndarray, "h w 3"]:
    """Upscale a frame and draw `caption` (wrapped; a newline starts a new line) in a bar above it."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    image = Image.fromarray(np.asarray(frame, np.uint8)).resize(
        (frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST
    )
    font = ImageFont.load_default()
    line_height = 12
    bar = line_height * caption_lines + 4
    canvas = Image.new("RGB", (image.width, image.height + bar), (0, 0, 0))
    canvas.paste(image, (0, bar))
    draw = ImageDraw.Draw(canvas)
    chars_per_line = max(image.width // 6, 8)
    lines = []
    for paragraph in caption.split("\n"):
        line = ""
        for word in paragraph.split():
            if line and len(line) + len(word) + 1 > chars_per_line:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        lines.append(line)
    for i, text in enumerate(lines[:caption_lines]):
        draw.text((3, 2 + i * line_height), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def side_by_side(
    left: UInt8[np.ndarray, "H W 3"], right: UInt8[np.ndarray, "H2 W2 3"]
) -> UInt8[np.ndarray, "h w 3"]:
    """Place two frames next to each other (the right one resized to the left one's height)."""
    right_image = Image.fromarray(np.asarray(right, np.uint8))
    height = left.shape[0]
    width = max(1, round(right.shape[1] * height / right.shape[0]))
    right_resized = np.asarray(right_image.resize((width, height), Image.NEAREST))
    return np.concatenate([np.asarray(left, np.uint8), right_resized], axis=1)


def write_episode(
    frames: Iterable[np.ndarray],
    path: str | Path,
    captions: Iterable[str] | str | None = "",
    fps: int = 8,
    scale: int = 4,
    caption_lines: int = 2,
) -> Path:
    """Write frames as a GIF (`.gif`, Pillow) or MP4 (`.mp4`, needs `imageio[ffmpeg]`), captioned.

    `frames` are uint8 RGB images (H, W, 3). `captions` is one caption for all frames (e.g. the
    instruction), one per frame (any iterable), or None for none.
    """
    frames = [np.asarray(f) for f in frames]  # also takes a generator or a stacked (T, H, W, 3) array
    if len(frames) == 0:
        raise ValueError("no frames to write")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    if captions is None:
        captions = ""
    captions = [captions] * len(frames) if isinstance(captions, str) else list(captions)
    if len(captions) != len(frames):
        raise ValueError(f"got {len(captions)} captions for {len(frames)} frames")
    for i, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions must be strings, got captions[{i}] = {caption!r}")
    for i, frame in enumerate(frames):
        # Casting floats in [0, 1] to uint8 would silently give a black video.
        if frame.dtype != np.uint8:
            raise TypeError(f"frames must have dtype uint8 (0..255), got frames[{i}] with dtype {frame.dtype}")
    path = Path(path)
    annotated = [annotate_frame(f, c, scale, caption_lines) for f, c in zip(frames, captions, strict=True)]
    if path.suffix.lower() == ".gif":
        images = [Image.fromarray(a).convert("P", palette=Image.ADAPTIVE, colors=64) for a in annotated]
        images[0].save(
            path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=True
        )
    elif path.suffix.lower() == ".mp4":
        try:
            import imageio.v2 as imageio
        except ImportError as error:
            raise ImportError(
                "writing MP4 needs `pip install imageio[ffmpeg]`; use a .gif path instead"
            ) from error
        imageio.mimwrite(path, annotated, fps=fps)
    else:
        raise ValueError(f"unsupported video format {path.suffix!r}; use .gif or .mp4")
    return path
