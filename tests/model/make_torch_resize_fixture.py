"""Golden fixture for `resize_rgb8_torch` (src/model/hf/resize.rs): torch's antialiased uint8 resize.

transformers 5.x's default Qwen-VL image processor (`Qwen2VLImageProcessor`, TorchvisionBackend)
resizes a contiguous uint8 CHW tensor with
`torchvision.transforms.v2.functional.resize(img, [h, w], interpolation=BICUBIC, antialias=True)`,
which on CPU runs ATen's `_upsample_bicubic2d_aa` natively on uint8 (int16 fixed-point weights).
This script crops a few real photographs shipped with scikit-image, saves the crops as PNG under
tests/model/photos/ (lossless, so the Rust test decodes exactly the bytes torch saw), resizes them
through transformers' own resize method (and checks that equals a direct torchvision call), and
writes:

- tests/model/photos/torch_resized.safetensors: one uint8 HWC tensor per case;
- tests/model/photos/torch_resized.json: the cases (source, sizes, filter, tensor name), plus, for
  information, how far Pillow's `Image.resize` is from torch. (`resize_rgb8` reproduces Pillow with
  the horizontal pass first; Pillow 13 sometimes runs the vertical pass first, python-pillow/Pillow#9549,
  so in those cases these numbers are Pillow 13's, and the Rust test prints `resize_rgb8`'s own.)

Versions it was made with: torch 2.15.0 (CPU, AVX512 machine: the AVX2 uint8 kernel),
torchvision 0.29.2, transformers 5.24.0, pillow 13.0.0, numpy 2.4.6, scikit-image 0.26.0,
safetensors 0.8.0.

Run from the repository root with that environment:

    python tests/model/make_torch_resize_fixture.py

Then: cargo test --lib resize -- --nocapture
"""

import json
import os

import numpy as np
import skimage
import torch
import torchvision.transforms.v2.functional as tvF
from PIL import Image
from safetensors.numpy import save_file
from transformers.image_processing_backends import TorchvisionBackend
from transformers.image_utils import PILImageResampling, SizeDict
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, smart_resize

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "photos")
DATA = os.path.join(os.path.dirname(skimage.__file__), "data")

# photograph -> crop box (left, top, right, bottom) in the original
SOURCES = {
    "astronaut.png": (128, 32, 384, 224),  # 256 x 192, face and suit
    "coffee.png": (184, 110, 416, 274),  # 232 x 164, cup, saucer, spoon
    "chelsea.png": (150, 40, 310, 160),  # 160 x 120, cat's eye and fur
    "rocket.jpg": (260, 100, 380, 300),  # 120 x 200, portrait
}

FILTERS = {"bicubic": PILImageResampling.BICUBIC, "bilinear": PILImageResampling.BILINEAR}


def targets(w, h):
    """(name, nw, nh, filter, smart-resize args or None) for a w x h source."""
    out = []
    # what the Qwen2-VL processor does with its defaults (factor 28, min 56*56, max 28*28*1280)
    sh, sw = smart_resize(h, w, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    out.append(("qwen2vl_default", sw, sh, "bicubic", (28, 56 * 56, 28 * 28 * 1280)))
    # Qwen3-VL's factor 32 with a pixel budget that forces a downscale
    sh, sw = smart_resize(h, w, factor=32, min_pixels=32 * 32, max_pixels=w * h // 2)
    out.append(("factor32_budget", sw, sh, "bicubic", (32, 32 * 32, w * h // 2)))
    out += [
        ("down", round(w * 0.61), round(h * 0.37), "bicubic", None),
        ("down_strong", round(w * 0.19), round(h * 0.23), "bicubic", None),
        ("up_w_down_h", round(w * 1.27), round(h * 0.4), "bicubic", None),
        ("bilinear_down", round(w * 0.45), round(h * 0.7), "bilinear", None),
    ]
    return out


EXTRA = {
    # upscales and single-axis resizes on the smaller sources (keeps the fixture small)
    "chelsea.png": [
        ("up", 187, 141, "bicubic", None),
        ("width_only", 97, 120, "bicubic", None),
        ("bilinear_up", 176, 131, "bilinear", None),
    ],
    "rocket.jpg": [
        ("up", 139, 233, "bicubic", None),
        ("height_only", 120, 131, "bicubic", None),
        ("down_h_up_w", 173, 88, "bicubic", None),
    ],
}


def main():
    os.makedirs(OUT, exist_ok=True)
    proc = Qwen2VLImageProcessor()
    tensors, cases = {}, []
    for name, box in SOURCES.items():
        crop = Image.open(os.path.join(DATA, name)).convert("RGB").crop(box)
        png = os.path.splitext(name)[0] + ".png"
        crop.save(os.path.join(OUT, png), optimize=True)
        # read back what the Rust test will decode
        crop = Image.open(os.path.join(OUT, png))
        w, h = crop.size
        # exactly how the torchvision backend turns a PIL image into a tensor: contiguous uint8 CHW
        chw = proc.process_image(crop, do_convert_rgb=True)
        assert chw.dtype == torch.uint8 and chw.is_contiguous() and chw.shape == (3, h, w)
        batch = torch.stack([chw])  # group_images_by_shape stacks same-sized images
        for tname, nw, nh, filt, smart in targets(w, h) + EXTRA.get(name, []):
            resample = FILTERS[filt]
            if smart is not None:
                factor, min_px, max_px = smart
                res = proc.resize(
                    batch, SizeDict(shortest_edge=min_px, longest_edge=max_px), resample=resample, factor=factor
                )
            else:
                res = TorchvisionBackend.resize(proc, batch, SizeDict(height=nh, width=nw), resample=resample)
            assert res.shape == (1, 3, nh, nw), (res.shape, nh, nw)
            interp = tvF.InterpolationMode.BICUBIC if filt == "bicubic" else tvF.InterpolationMode.BILINEAR
            direct = tvF.resize(chw, [nh, nw], interpolation=interp, antialias=True)
            assert torch.equal(res[0], direct)
            got = res[0].permute(1, 2, 0).contiguous().numpy()
            key = f"{os.path.splitext(name)[0]}/{tname}"
            tensors[key] = got
            pil = np.asarray(crop.resize((nw, nh), Image.Resampling.BICUBIC if filt == "bicubic" else Image.Resampling.BILINEAR))
            diff = np.abs(pil.astype(np.int16) - got.astype(np.int16))
            case = {
                "tensor": key,
                "source": png,
                "w": w,
                "h": h,
                "nw": nw,
                "nh": nh,
                "filter": filt,
                "pillow_vs_torch": {
                    "differing_bytes": int((diff != 0).sum()),
                    "total_bytes": int(diff.size),
                    "max_abs": int(diff.max()),
                },
            }
            cases.append(case)
            p = case["pillow_vs_torch"]
            print(
                f"{key:28s} {w}x{h} -> {nw}x{nh} {filt:8s} pillow vs torch: "
                f"{p['differing_bytes']}/{p['total_bytes']} bytes differ, max |diff| {p['max_abs']}"
            )
    save_file(tensors, os.path.join(OUT, "torch_resized.safetensors"))
    meta = {
        "about": "torch uint8 antialiased resize (transformers 5.24 Qwen2VLImageProcessor path) of the PNGs here; "
        "tensors are HWC uint8. pillow_vs_torch: Pillow Image.resize on the same input, for information "
        "(Pillow 13 runs the vertical pass first when the height shrinks much more than the width, "
        "python-pillow/Pillow#9549; resize_rgb8 always goes horizontal first, as older Pillow did).",
        "versions": {
            "torch": torch.__version__,
            "torchvision": __import__("torchvision").__version__,
            "transformers": __import__("transformers").__version__,
            "pillow": Image.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        },
        "cases": cases,
    }
    with open(os.path.join(OUT, "torch_resized.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"{len(cases)} cases, {total} bytes under {OUT}")


if __name__ == "__main__":
    main()
