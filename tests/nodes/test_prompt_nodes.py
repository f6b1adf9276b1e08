"""The prompt nodes' adapters, in-process with ComfyUI 0.3.75's modules (no server).

ComfyUI is imported as the host README describes (its folder on ``sys.path``, argument parsing
off, ``--cpu``) by tests/nodes/conftest.py, which imports the pack as a package. Real-server and
frontend runs are in tests/host and tests/browser.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT_TESTS = REPO_ROOT / "tests" / "mova_model" / "prompt"


def _load(name: str, path: Path):
    """A test helper module of tests/mova_model/prompt, loaded by path."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def prompt_nodes(node_module):
    return node_module("prompt")


@pytest.fixture
def llm_dir(prompt_nodes, tmp_path, monkeypatch):
    """A fresh ``mova_llm`` folder registered in ``folder_paths`` for one test."""
    import folder_paths

    root = tmp_path / "mova_llm"
    root.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "mova_llm", ([str(root)], set()))
    return root


def _node_info(node_cls) -> dict:
    return node_cls.GET_NODE_INFO_V1()


def test_registered_list_and_folder(prompt_nodes):
    import folder_paths

    assert [n.__name__ for n in prompt_nodes.NODES] == ["MovaPromptComposer", "MovaPromptEnhancer"]
    assert os.path.join(folder_paths.models_dir, "mova_llm") in folder_paths.get_folder_paths("mova_llm")


def test_schemas(prompt_nodes):
    composer = _node_info(prompt_nodes.MovaPromptComposer)
    assert composer["display_name"] == "MOVA Prompt Composer"
    assert composer["category"] == "MOVA/prompt"
    assert composer["output"] == ["STRING"]
    assert list(composer["input"]["required"]) == [
        "scene", "action", "speakers", "dialogue", "sound_effects", "ambience", "music", "no_subtitles",
    ]  # fmt: skip
    enhancer = _node_info(prompt_nodes.MovaPromptEnhancer)
    assert enhancer["output"] == ["STRING", "STRING"]
    assert enhancer["output_name"] == ["prompt", "report"]
    required = enhancer["input"]["required"]
    assert required["api_key_env"][1]["default"] == "OPENAI_API_KEY"  # a variable NAME, not a key
    assert required["backend"][1]["options"] == ["openai_compatible", "local_transformers"]
    assert required["on_failure"][1]["options"] == ["error", "fallback", "keep"]
    assert set(enhancer["input"]["optional"]) == {"first_frame_description", "fallback_prompt"}
    assert enhancer["input"]["optional"]["fallback_prompt"][1]["forceInput"] is True


def test_composer_executes_library_code(prompt_nodes):
    from mova_model.prompt.composer import compose_from_text_fields

    fields = dict(scene="A dog runs on a beach", dialogue="Owner (calling out): Come back!", music="ukulele")
    output = prompt_nodes.MovaPromptComposer.execute(**fields, no_subtitles=True)
    assert output.args == (compose_from_text_fields(**fields, no_subtitles=True),)
    assert output.ui.as_dict() == {"text": output.args}


def test_composer_bad_field_is_a_value_error(prompt_nodes):
    with pytest.raises(ValueError, match="dialogue, line 1"):
        prompt_nodes.MovaPromptComposer.execute(scene="x", dialogue="no speaker here")


def _enhancer_inputs(**overrides):
    inputs = dict(
        text='A chef flips a pancake and says "Voilà !"', backend="openai_compatible",
        endpoint_url="http://127.0.0.1:9/v1", model_name="m", api_key_env="", timeout_s=10,
        local_model="(none)", no_subtitles=True, on_failure="error", max_new_tokens=64, temperature=0.0,
        rewrite_seed=0,
    )  # fmt: skip
    inputs.update(overrides)
    return inputs


def test_enhancer_http_backend(prompt_nodes):
    standin = _load("standin_openai", PROMPT_TESTS / "standin_openai.py")  # stands in for the remote service
    with standin.StandInChatServer() as server:
        output = prompt_nodes.MovaPromptEnhancer.execute(
            **_enhancer_inputs(endpoint_url=server.base_url),
            first_frame_description="A chef in a white hat at a stove.",
        )
    prompt, report = output.args
    assert '"Voilà !"' in prompt and prompt.endswith("This video has no subtitles.")
    assert report.startswith("Prompt check: OK")
    assert "A chef in a white hat at a stove." in server.requests[0]["json"]["messages"][1]["content"]


def test_enhancer_local_backend_lists_and_runs_the_model(prompt_nodes, llm_dir):
    tiny_lm = _load("tiny_lm", PROMPT_TESTS / "tiny_lm.py")
    tiny_lm.build_tiny_lm(llm_dir / "org" / "tiny-llama")
    options = _node_info(prompt_nodes.MovaPromptEnhancer)["input"]["required"]["local_model"][1]["options"]
    assert options == ["(none)", "org/tiny-llama"]
    fallback = 'A chef flips a pancake.\n\nHe says, "Voilà !"\n\nThe audio features his voice.'
    output = prompt_nodes.MovaPromptEnhancer.execute(
        **_enhancer_inputs(backend="local_transformers", local_model="org/tiny-llama", on_failure="fallback",
                           max_new_tokens=6),
        fallback_prompt=fallback,
    )  # fmt: skip
    prompt, report = output.args
    assert prompt == fallback  # the random model's gibberish fails the check
    assert "no final audio paragraph" in report and "Using the fallback prompt" in report


def test_enhancer_local_backend_without_model_says_where_to_put_it(prompt_nodes, llm_dir):
    with pytest.raises(ValueError) as info:
        prompt_nodes.MovaPromptEnhancer.execute(**_enhancer_inputs(backend="local_transformers"))
    assert str(llm_dir) in str(info.value) and "config.json" in str(info.value)


def test_enhancer_stops_on_comfy_interrupt(prompt_nodes):
    """Issue 9: a hanging chat server kept the node for the whole timeout; ComfyUI's interrupt must end it."""
    import threading
    import time

    import comfy.model_management as mm

    standin = _load("standin_openai", PROMPT_TESTS / "standin_openai.py")
    with standin.StandInChatServer(delay_s=60.0) as server:

        def interrupt_when_asked():
            server.received.wait(10)
            mm.interrupt_current_processing(True)

        threading.Thread(target=interrupt_when_asked, daemon=True).start()
        start = time.monotonic()
        try:
            with pytest.raises(mm.InterruptProcessingException):
                prompt_nodes.MovaPromptEnhancer.execute(**_enhancer_inputs(endpoint_url=server.base_url, timeout_s=120))
        finally:
            mm.interrupt_current_processing(False)
        elapsed = time.monotonic() - start
    assert elapsed < 3.0, f"the interrupt took {elapsed:.1f} s to stop the node"
