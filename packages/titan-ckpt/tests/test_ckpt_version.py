import importlib.metadata

import titan_ckpt


def test_version_matches_the_installed_metadata():
    assert titan_ckpt.__version__ == importlib.metadata.version("titan-ckpt")
