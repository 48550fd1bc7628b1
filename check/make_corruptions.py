"""The offline digits' test split under common corruptions, in MNIST-C's layout, for
`main.py --todo corruptions --corruptions-dir DIR`: DIR/<name>/test_images.npy (uint8,
5 x 1000 x 28 x 28 x 1: severities 1 to 5 in order) and DIR/<name>/test_labels.npy.

    python check/make_corruptions.py DIR [--corruptions NAME ...] [--seed 0]

The corruptions are those of imagecorruptions, the reference code of the -C benchmarks, in
its imagecorruptions-imaug release (the original's last one fails with NumPy 2 and recent
setuptools); it is a test dependency (requirements-dev.txt), needed by this script only. Its
`corrupt()` refuses images under 32 pixels, so each corruption's own function is called; two
of them mishandle one-channel images in that release (motion_blur fails, glass_blur blurs one
axis), so they run on three equal channels. The severities keep ImageNet-C's constants, made
for 224-pixel images: on 28-pixel digits the blurs erase much of a digit from severity 3 on.
Seeded: the same DIR twice is the same bytes (about a minute for all 15 on one core).
"""

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from imagecorruptions import corruption_dict
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from data_utils import load_task  # noqa: E402
from results import atomic_write_bytes  # noqa: E402

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur",
               "zoom_blur", "glass_blur", "snow", "frost", "fog", "brightness", "contrast",
               "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = 5
VIA_RGB = {"motion_blur", "glass_blur"}  # their one-channel paths are broken (see above)
OWN_GENERATOR = {"impulse_noise", "glass_blur"}  # they draw from their own: given a seed


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """uint8 N x 28 x 28 digits under one corruption at one severity, image by image, each
    from its own seed."""
    function, out = corruption_dict[name], np.empty_like(images)
    seeds = np.random.SeedSequence([seed, CORRUPTIONS.index(name), severity]).generate_state(
        len(images))
    for i, (image, image_seed) in enumerate(zip(images, seeds)):
        np.random.seed(image_seed)
        pil = Image.fromarray(np.repeat(image[..., None], 3, -1) if name in VIA_RGB else image)
        extra = {"seed": int(image_seed)} if name in OWN_GENERATOR else {}
        found = np.asarray(function(pil, severity, **extra))
        out[i] = np.uint8(np.clip(found[..., 0] if found.ndim == 3 else found, 0, 255))
    return out


def save(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path, help="where the corruption folders go")
    p.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS), choices=CORRUPTIONS,
                   metavar="NAME", help="which (default: all 15)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    _, test = load_task("MNIST5K", "", torch.device("cpu"))
    digits = (test.x[:, 0] * 255).round().to(torch.uint8).numpy()  # N x 28 x 28
    labels = np.tile(test.y.numpy(), SEVERITIES)
    for name in a.corruptions:
        images = np.concatenate([corrupt(digits, name, s, a.seed)
                                 for s in range(1, SEVERITIES + 1)])
        folder = a.dir / name
        folder.mkdir(parents=True, exist_ok=True)
        save(folder / "test_images.npy", images[..., None])
        save(folder / "test_labels.npy", labels)
        print(f"{name}: {len(images)} images ({SEVERITIES} severities) in {folder}")


if __name__ == "__main__":
    main()
