"""The pure helpers behind the nodes (no ComfyUI needed): model-folder listing, canny maps, preview
throttling and drawing, and downloading from a (fake, local) Hugging Face Hub."""
import os

import pytest
import torch

from conftest import FakeHub, TINY_CHECKPOINT, TINY_IMAGE_TOKENIZER, hub_repos
from lumina_core import CheckpointError, InputError
from lumina_core.model import download as dl
from lumina_core.model import files as model_files
from lumina_core.image.maps import canny_edges, preprocess
from lumina_core.image.preview import PreviewSchedule, palette_preview


# --------------------------------------------------------------------------- model folders
def test_listing_finds_checkpoint_folders_and_tokenizer_files(tiny_models, tmp_path):
    other = tmp_path / "other"
    (other / TINY_CHECKPOINT).mkdir(parents=True)
    (other / TINY_CHECKPOINT / "config.json").write_text("{}")
    (other / TINY_CHECKPOINT / "model.safetensors").write_bytes(b"")
    (other / "notes.txt").write_text("not a model")
    (other / "half-downloaded").mkdir()
    transformers = model_files.list_transformers([tiny_models, str(other)])
    assert transformers[TINY_CHECKPOINT] == os.path.join(tiny_models, TINY_CHECKPOINT)  # first folder wins
    assert "half-downloaded" not in transformers and "notes.txt" not in transformers
    tokenizers = model_files.list_image_tokenizers([tiny_models, str(other)])
    assert list(k for k in tokenizers if not k.startswith(model_files.DEMO_PREFIX)) == [TINY_IMAGE_TOKENIZER]


def test_bundled_demo_is_offered_under_a_demo_name():
    demo = os.path.join(model_files.DEMO_DIR, model_files.DEMO_TRANSFORMER)
    listed = model_files.list_transformers([])
    assert (model_files.DEMO_PREFIX + model_files.DEMO_TRANSFORMER in listed) == model_files.is_checkpoint_folder(demo)


def test_resolve_never_leaves_the_listing(tiny_models):
    listing = model_files.list_transformers([tiny_models])
    assert model_files.resolve(TINY_CHECKPOINT, listing, "checkpoint", [tiny_models]).startswith(tiny_models)
    for name in ("../" + TINY_CHECKPOINT, "/etc", os.path.join(tiny_models, TINY_CHECKPOINT)):
        with pytest.raises(CheckpointError, match="is a path"):
            model_files.resolve(name, listing, "checkpoint", [tiny_models])
    with pytest.raises(CheckpointError, match="(?s)not found.*movqgan_270M.ckpt"):
        model_files.resolve("Lumina-mGPT-2.0", listing, "checkpoint", [tiny_models])


# --------------------------------------------------------------------------- condition maps
def test_canny_is_white_edges_on_black():
    image = torch.zeros(2, 32, 32, 3)
    image[:, 8:24, 8:24] = 1.0  # a white square
    edges = canny_edges(image)
    assert edges.shape == (2, 32, 32, 3) and set(edges.unique().tolist()) == {0.0, 1.0}
    assert edges[0, 16, 16].sum() == 0 and edges[0, 0, 0].sum() == 0  # inside and outside: black
    assert edges[0, 8, 8:24].max() == 1 or edges[0, 7, 8:24].max() == 1  # the square's top edge: white


def test_preprocess_none_keeps_rgb_and_rejects_unknowns():
    grey = torch.rand(1, 8, 8, 1)
    assert torch.equal(preprocess(grey, "none")[..., 1], grey[..., 0])
    with pytest.raises(InputError, match="canny"):
        preprocess(grey, "sobel")
    with pytest.raises(InputError, match="low <= high"):
        canny_edges(grey, 200, 100)


# --------------------------------------------------------------------------- previews
def test_preview_schedule_throttles_rows_and_time():
    now = [0.0]
    schedule = PreviewSchedule(96, min_seconds=1.0, clock=lambda: now[0])
    due = []
    for row in range(1, 97):
        now[0] += 0.2
        if schedule.due(row):
            due.append(row)
    assert due[0] == 1 and due[-1] == 96
    assert all(r % 12 == 0 for r in due[1:-1]) and len(due) >= 8  # about eight previews, every 12 rows
    fast = PreviewSchedule(96, min_seconds=1.0, clock=lambda: 0.0)
    assert [r for r in range(1, 97) if fast.due(r)] == [1, 96]  # no two previews within a second


def test_palette_preview_draws_codes_and_grey_pending_rows():
    palette = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    image = palette_preview(palette, torch.tensor([[0, 1]]), total_rows=2, cell=4)
    assert image.size == (8, 8)
    assert image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((7, 3)) == (0, 0, 255)
    assert image.getpixel((3, 6)) == (128, 128, 128)


# --------------------------------------------------------------------------- downloads
@pytest.fixture
def hub(tiny_models):
    hub = FakeHub(hub_repos(tiny_models))
    yield hub
    hub.close()


def test_download_transformer_with_progress(hub, tmp_path):
    seen = []
    folder = dl.download("Lumina-mGPT-2.0 (text-to-image)", str(tmp_path), endpoint=hub.url,
                         progress=lambda done, total, name: seen.append((done, total, name)))
    assert folder == str(tmp_path / "Lumina-mGPT-2.0")
    expected = hub.repos["Alpha-VLLM/Lumina-mGPT-2.0"]
    for name, data in expected.items():
        with open(os.path.join(folder, name), "rb") as f:
            assert f.read() == data
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and seen[-1][0] == seen[-1][1] == sum(len(v) for v in expected.values())
    assert {n for _, _, n in seen} == set(expected)
    gets = len(hub.downloads())
    dl.download("Lumina-mGPT-2.0 (text-to-image)", str(tmp_path), endpoint=hub.url)
    assert len(hub.downloads()) == gets  # complete files are not fetched again


def test_download_skips_a_missing_optional_file_but_not_a_required_one(hub, tmp_path):
    repo = hub.repos["Alpha-VLLM/Lumina-mGPT-2.0"]
    del repo["generation_config.json"]
    folder = dl.download("Lumina-mGPT-2.0 (text-to-image)", str(tmp_path), endpoint=hub.url)
    assert not os.path.exists(os.path.join(folder, "generation_config.json"))
    del repo["tokenizer.json"]
    with pytest.raises(Exception, match="404|not found|Entry"):
        dl.download("Lumina-mGPT-2.0 (text-to-image)", str(tmp_path / "again"), endpoint=hub.url)


def test_download_cancel_stops_between_polls(hub, tmp_path):
    class Stop(Exception):
        pass

    calls = []

    def cancel():
        calls.append(1)
        raise Stop

    with pytest.raises(Stop):
        dl.download("MoVQGAN 270M (image tokenizer)", str(tmp_path), endpoint=hub.url, cancel=cancel)
    assert len(calls) == 1


def test_unknown_download_name():
    with pytest.raises(InputError, match="MoVQGAN 270M"):
        dl.download("Lumina-mGPT-3", "/nonexistent")
