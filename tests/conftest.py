import os

import pytest

# Tests never reach a model hub or YouTube.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def ontology():
    from pipeline.ontology import Ontology
    return Ontology.load()
