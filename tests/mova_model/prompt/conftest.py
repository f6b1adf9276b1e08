"""Fixtures for the prompt tests: the stand-in OpenAI-compatible server module."""
import importlib.util
import sys
from pathlib import Path

import pytest

STANDIN_PATH = Path(__file__).resolve().with_name("standin_openai.py")


def load_standin():
    """Import ``standin_openai.py`` by path (tests are not a package; pytest uses importlib mode)."""
    if "standin_openai" not in sys.modules:
        spec = importlib.util.spec_from_file_location("standin_openai", STANDIN_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["standin_openai"] = module
        spec.loader.exec_module(module)
    return sys.modules["standin_openai"]


@pytest.fixture(scope="session")
def standin():
    """The stand-in server module: ``standin.StandInChatServer(reply=..., delay_s=...)``."""
    return load_standin()


def load_tiny_lm():
    """Import ``tiny_lm.py`` by path (the tiny random-weight causal-LM builder)."""
    if "tiny_lm" not in sys.modules:
        spec = importlib.util.spec_from_file_location("tiny_lm", STANDIN_PATH.with_name("tiny_lm.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["tiny_lm"] = module
        spec.loader.exec_module(module)
    return sys.modules["tiny_lm"]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny random-weight Llama folder with a chat-template tokenizer (built once per session)."""
    return load_tiny_lm().build_tiny_lm(tmp_path_factory.mktemp("mova_llm") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_lm():
    """The tiny-LM builder module: ``tiny_lm.build_tiny_lm(folder, seed=0, chat_template=True)``."""
    return load_tiny_lm()
