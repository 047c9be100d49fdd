"""Condition-image preparation as upstream: transparency on white, shrink, bicubic cover, centre crop."""
import numpy as np
import torch
from PIL import Image

from lumina_core.image.prep import prepare_condition, resize_center_crop, signed_to_unit_bhwc, whiten_transparency


def test_transparency_is_whitened_and_opaque_alpha_dropped():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(whiten_transparency(rgba))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 255]
    opaque = Image.new("RGBA", (2, 2), (10, 20, 30, 255))
    assert np.asarray(whiten_transparency(opaque))[0, 0].tolist() == [10, 20, 30]
    gray = Image.new("L", (2, 2), 77)  # depth/canny maps are often grayscale
    assert np.asarray(whiten_transparency(gray))[0, 0].tolist() == [77, 77, 77]


def test_16_bit_and_float_maps_keep_their_range():
    """16-bit depth maps (PIL mode I;16 / I) and float maps are scaled to 8 bits, not clipped at 255."""
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    for img in (Image.fromarray(ramp), Image.fromarray(ramp.astype(np.int32))):  # modes I;16 and I
        out = np.asarray(whiten_transparency(img))[..., 0]
        assert img.mode.startswith("I") and out.min() == 0 and out.max() == 255 and abs(out.mean() - 127.5) < 2, img.mode
    floats = Image.fromarray(np.full((2, 2), 0.5, np.float32))  # mode F
    assert np.asarray(whiten_transparency(floats))[0, 0].tolist() == [128, 128, 128]


def test_resize_covers_then_crops_the_centre():
    img = Image.new("RGB", (400, 100), (0, 0, 0))
    img.paste((255, 255, 255), (175, 0, 225, 100))  # a white band around the centre
    out = resize_center_crop(img, 64, 64)
    assert out.size == (64, 64)
    arr = np.asarray(out)
    assert arr[32, 32].tolist() == [255, 255, 255]   # centre kept
    assert arr[32, 0].mean() < 40 and arr[32, 63].mean() < 40  # band 112..144 of 256 after scaling; crop 96..160


def test_prepare_condition_from_comfy_tensor():
    t = torch.zeros(1, 20, 40, 3)
    t[..., 0] = 1.0
    x = prepare_condition(t, 64, 32)
    assert x.shape == (1, 3, 32, 64) and torch.allclose(x[0, 0], torch.ones(32, 64))
    assert torch.allclose(x[0, 1], -torch.ones(32, 64))
    back = signed_to_unit_bhwc(x)
    assert back.shape == (1, 32, 64, 3) and back[..., 0].min() == 1.0


def test_engine_loads_without_opencv_and_only_canny_asks_for_it():
    """A broken OpenCV (common when packs install different variants) must not stop the pack from loading."""
    import subprocess
    import sys
    code = (
        "import sys; sys.modules['cv2'] = None\n"
        "import torch, lumina_core\n"
        "from lumina_core.image.maps import preprocess\n"
        "from lumina_core import InputError\n"
        "img = torch.rand(1, 8, 8, 3)\n"
        "assert torch.equal(preprocess(img, 'none'), img)\n"
        "try:\n    preprocess(img, 'canny')\nexcept InputError as e:\n    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert "ERR canny preprocessing needs OpenCV: pip install opencv-python-headless" in out.stdout
