"""Fixtures for the tests that call the nodes in this process (tests/test_nodes_*.py): import the ones a file
uses (`from node_fixtures import nodes, model  # noqa: F401`); `one_thread` applies to the whole file once
imported."""
import pytest
import torch

from conftest import TINY_CHECKPOINT, TINY_IMAGE_TOKENIZER


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared 2-core box
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def nodes(pack):
    from lumina_pack import nodes
    return nodes


@pytest.fixture(scope="module")
def model(nodes):
    return nodes.loaders.ModelLoader.execute(TINY_CHECKPOINT, "auto", "sdpa").args[0]


@pytest.fixture(scope="module")
def vq(nodes):
    return nodes.loaders.ImageTokenizerLoader.execute(TINY_IMAGE_TOKENIZER).args[0]
