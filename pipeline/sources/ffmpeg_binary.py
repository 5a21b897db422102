"""Which ffmpeg to run: the static build inside the ``imageio-ffmpeg`` wheel.

So the audioset source needs nothing beyond the package registry: no system ffmpeg, no
download at first use (the binary is part of the wheel). Set ``IMAGEIO_FFMPEG_EXE`` to run
another build, e.g. a system ffmpeg with more codecs.
"""

from __future__ import annotations

import functools


class FfmpegMissing(RuntimeError):
    """No ffmpeg binary can be found."""


@functools.lru_cache(maxsize=1)
def ffmpeg_executable() -> str:
    """The absolute path of the ffmpeg binary, handed explicitly to yt-dlp and the decoder."""
    import imageio_ffmpeg

    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as error:  # a platform without a binary wheel, and no IMAGEIO_FFMPEG_EXE
        raise FfmpegMissing(f"no ffmpeg binary ({error}); install an ffmpeg and set IMAGEIO_FFMPEG_EXE "
                            "to its path") from None
