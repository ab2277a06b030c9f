"""Shared fixtures: the test model, its checkpoint folder, and one Ray Serve instance.

The model every service test runs is ``TEST_MODEL``, a tiny random-weight
checkpoint written in the real layout and loaded through the real code path.
Ray starts at most once per session, and only for tests that ask for it.
"""

from __future__ import annotations

import os

import pytest

from serve_app.pipeline.registry import MODELS_DIR_ENV

# The guide's balanced and freestyle recipes turn ERG on, which only the v1 family honours.
TEST_MODEL = "acestep-v15-tiny"
ERG_MODELS = {"ace-step-v1-tiny"}
ERG_SKIP_REASON = "needs the ACE-Step v1 family (ERG); TEST_MODEL is " + TEST_MODEL


@pytest.fixture(scope="session")
def models_root(tmp_path_factory):
    """A private models folder; replicas inherit it through the environment."""
    root = tmp_path_factory.mktemp("models")
    os.environ[MODELS_DIR_ENV] = str(root)
    return root
