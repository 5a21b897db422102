"""The natural photographs the tiny base is pretrained on, and their random crops: what ships
inside scikit-image and scikit-learn, captioned from their names (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Bundled photographs (file, what it shows). All ship inside the installed packages.
SKIMAGE_PHOTOS = {
    "astronaut.png": "an astronaut in a spacesuit", "brick.png": "a brick wall",
    "camera.png": "a man with a camera", "chelsea.png": "a cat", "coffee.png": "a cup of coffee",
    "coins.png": "old coins", "grass.png": "grass", "gravel.png": "gravel",
    "hubble_deep_field.jpg": "galaxies in deep space", "ihc.png": "stained tissue under a microscope",
    "moon.png": "the surface of the moon", "motorcycle_left.png": "a motorcycle",
    "page.png": "a page of a book", "retina.jpg": "a human retina",
    "rocket.jpg": "a rocket on a launch pad", "text.png": "handwritten text",
}
SKLEARN_PHOTOS = {"china.jpg": "a chinese temple", "flower.jpg": "a flower"}


def natural_photographs() -> list[tuple[str, np.ndarray]]:
    """(caption, RGB uint8 array) for each bundled photograph."""
    import skimage.data
    import sklearn.datasets

    folders = [(Path(skimage.data.__file__).parent, SKIMAGE_PHOTOS),
               (Path(sklearn.datasets.__file__).parent / "images", SKLEARN_PHOTOS)]
    photos = []
    for folder, names in folders:
        for name, what in names.items():
            image = Image.open(folder / name).convert("RGB")
            photos.append((f"a photograph of {what}", np.asarray(image)))
    return photos


def random_crops(photos, size: int, count: int, rng: np.random.Generator):
    """``count`` crops of ``size`` px at random scales and positions, with their captions.
    Horizontal flips are fine here: photographs, unlike spectrograms, have no time axis."""
    crops, captions = [], []
    for _ in range(count):
        caption, photo = photos[rng.integers(len(photos))]
        height, width = photo.shape[:2]
        # A square of the photo between the whole short side and 4x the crop, shrunk to the
        # crop: resizing only that region, not the whole photograph, keeps this cheap.
        box = int(rng.integers(min(size, min(height, width)), min(height, width) + 1)) \
            if min(height, width) <= 4 * size else int(rng.integers(size, 4 * size + 1))
        top = rng.integers(height - box + 1)
        left = rng.integers(width - box + 1)
        region = Image.fromarray(photo[top:top + box, left:left + box])
        crop = np.asarray(region.resize((size, size), Image.BILINEAR))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(crop.transpose(2, 0, 1))
        captions.append(caption)
    return np.stack(crops), captions
