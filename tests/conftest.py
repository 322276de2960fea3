import os

import pytest
import torch

# Triton kernels run in its interpreter on machines without a GPU. Triton reads this when a kernel is
# decorated, so it has to be set before any test imports tameshi.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def server_llm():
    """The embedded default model, loaded once for every server test (a few seconds each time)."""
    pytest.importorskip("fastapi")
    from tameshi import LLM
    from tameshi.engine.engine import EngineConfig

    # a 2048-token window: over-context prompts stay small enough to build and send quickly
    llm = LLM(progress=False, engine_config=EngineConfig(max_model_len=2048))
    yield llm
    llm.close()


@pytest.fixture(scope="session")
def serve(server_llm):
    """start(config=None, served=None) -> a RunningServer (uvicorn on a thread, OS-picked port) over the
    shared model, or over `served` (a ServedModel); all are stopped when the session ends."""
    from tameshi.server.app import create_app
    from tameshi.server.launch import start_in_thread

    running = []

    def start(config=None, served=None):
        running.append(start_in_thread(create_app(served or server_llm, config)))
        return running[-1]

    yield start
    for server in running:
        server.stop()


@pytest.fixture(scope="session")
def server(serve):
    """The server with the default ServerConfig."""
    return serve()
