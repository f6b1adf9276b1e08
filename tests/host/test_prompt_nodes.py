"""Prompt Composer and Prompt Enhancer through the real ComfyUI 0.3.75 server.

The Enhancer talks to a small OpenAI-compatible server started here on 127.0.0.1
(tests/mova_model/prompt/standin_openai.py): it STANDS IN FOR THE REMOTE CHAT SERVICE a user
would configure; the ComfyUI server process reaches it over real HTTP via the endpoint_url input.
"""
import importlib.util
import json
import socket
import sys
import threading
import time

from host_fixtures import REPO_ROOT

from mova_model.prompt.composer import compose_from_text_fields


def _standin():
    if "standin_openai" not in sys.modules:
        path = REPO_ROOT / "tests" / "mova_model" / "prompt" / "standin_openai.py"
        spec = importlib.util.spec_from_file_location("standin_openai", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["standin_openai"] = module
        spec.loader.exec_module(module)
    return sys.modules["standin_openai"]


COMPOSER_FIELDS = {
    "scene": "两个学生站在校门口，阳光照在他们身上",
    "action": "The girl waves\nThe boy runs toward her",
    "speakers": "小红: the girl in the yellow raincoat\n小明: the boy with glasses",
    "dialogue": "小红（大声）：你来了！\n小明 (out of breath): Sorry, I'm late.",
    "sound_effects": "quick footsteps on pavement",
    "ambience": "a distant school bell",
    "music": "",
    "no_subtitles": True,
}


def _enhancer(text, endpoint_url, **overrides):
    inputs = {
        "text": text, "backend": "openai_compatible", "endpoint_url": endpoint_url, "model_name": "stand-in",
        "api_key_env": "OPENAI_API_KEY", "timeout_s": 20, "local_model": "(none)", "no_subtitles": True,
        "on_failure": "error", "max_new_tokens": 256, "temperature": 0.0, "rewrite_seed": 0,
    }  # fmt: skip
    inputs.update(overrides)
    return {"class_type": "MovaPromptEnhancer", "inputs": inputs}


def _preview(source):
    return {"class_type": "PreviewAny", "inputs": {"source": source}}


def _text(result, node_id) -> str:
    return "\n".join(result.ui_outputs(node_id)["text"])


def test_nodes_listed_and_llm_folder_registered(comfy):
    info = comfy.object_info()
    assert info["MovaPromptComposer"]["category"] == "MOVA/prompt"
    assert info["MovaPromptEnhancer"]["output_name"] == ["prompt", "report"]
    assert "mova_llm" in comfy.get_json("/models")


def test_composer_runs_on_the_server(comfy):
    workflow = {
        "1": {"class_type": "MovaPromptComposer", "inputs": COMPOSER_FIELDS},
        "2": _preview(["1", 0]),
    }
    result = comfy.run(workflow, timeout=60)
    assert result.status == "success", result.error
    expected = compose_from_text_fields(**COMPOSER_FIELDS)
    assert _text(result, "2") == expected
    assert '"你来了！"' in expected and "\"Sorry, I'm late.\"" in expected
    assert _text(result, "1") == expected  # the Composer's own text preview


def test_enhancer_against_standin_service(comfy):
    text = 'A boy runs to a girl at the school gate. She shouts "你来了！" and he says "Sorry, I\'m late." Footsteps.'
    with _standin().StandInChatServer() as server:
        workflow = {
            "1": _enhancer(text, server.base_url, rewrite_seed=11, first_frame_description=["4", 0]),
            "2": _preview(["1", 0]),
            "3": _preview(["1", 1]),
            # any node with a STRING output (e.g. an image captioner) can feed the first-frame description
            "4": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "Two students at a school gate."}},
        }
        result = comfy.run(workflow, timeout=120)
    assert result.status == "success", result.error
    prompt = _text(result, "2")
    assert '"你来了！"' in prompt and "\"Sorry, I'm late.\"" in prompt
    assert prompt.endswith("The audio features the spoken lines and soft room tone.\n\nThis video has no subtitles.")
    assert _text(result, "3").startswith("Prompt check: OK")
    (request,) = server.requests
    assert request["json"]["model"] == "stand-in" and request["json"]["seed"] == 11
    assert text in request["json"]["messages"][1]["content"]
    assert "Two students at a school gate." in request["json"]["messages"][1]["content"]


def test_enhancer_falls_back_to_the_composer(comfy):
    def loses_dialogue(request):
        return "A boy runs to a girl.\n\nThe audio features footsteps."

    fields = dict(COMPOSER_FIELDS, action="The girl waves twice")
    with _standin().StandInChatServer(reply=loses_dialogue) as server:
        workflow = {
            "1": {"class_type": "MovaPromptComposer", "inputs": fields},
            "2": _enhancer('She shouts "你来了！"', server.base_url, on_failure="fallback", rewrite_seed=12,
                           fallback_prompt=["1", 0]),
            "3": _preview(["2", 0]),
            "4": _preview(["2", 1]),
        }  # fmt: skip
        result = comfy.run(workflow, timeout=120)
    assert result.status == "success", result.error
    assert _text(result, "3") == compose_from_text_fields(**fields)
    report = _text(result, "4")
    assert 'the quoted line "你来了！" is not in the rewrite word for word' in report
    assert "Using the fallback prompt" in report


def test_enhancer_unreachable_endpoint_is_a_clear_error(comfy):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}/v1"
    workflow = {"1": _enhancer("A dog barks.", endpoint, rewrite_seed=13), "2": _preview(["1", 0])}
    result = comfy.run(workflow, timeout=60)
    assert result.status == "error"
    assert "connection refused" in result.error and f"127.0.0.1:{port}" in result.error


def test_enhancer_hanging_service_is_stopped_by_interrupt(comfy):
    """Issue 9: with a chat service that never answers, POST /interrupt must end the node at once
    (it blocked the queue for the whole 120 s timeout), and the next prompt must run."""
    with _standin().StandInChatServer(delay_s=300.0) as server:

        def interrupt_once_the_request_hangs():
            if server.received.wait(60):
                time.sleep(1.0)  # the node is now waiting on the socket
                comfy.interrupt()

        threading.Thread(target=interrupt_once_the_request_hangs, daemon=True).start()
        workflow = {"1": _enhancer("A dog barks.", server.base_url, timeout_s=120, rewrite_seed=14),
                    "2": _preview(["1", 0])}
        result = comfy.run(workflow, timeout=90)
        assert server.received.is_set()
    assert result.status == "interrupted", f"{result.status}: {result.error}"
    interrupted = [e for e in result.events if e["type"] == "execution_interrupted"]
    assert str(interrupted[0]["data"]["node_id"]) == "1"
    assert result.seconds < 10.0, f"the interrupt took effect after {result.seconds:.1f} s"
    follow = comfy.run({"1": {"class_type": "MovaPromptComposer", "inputs": COMPOSER_FIELDS},
                        "2": _preview(["1", 0])}, timeout=60)
    assert follow.status == "success", follow.error


WORKFLOWS = REPO_ROOT / "workflows" / "api"


def _small_run(workflow: dict, checkpoint: str, image: str) -> dict:
    """The shipped workflow on the tiny checkpoint, at a tiny size and step count (CPU-friendly)."""
    for node in workflow.values():
        inputs = node["inputs"]
        if node["class_type"] == "MovaLoader":
            inputs["checkpoint"] = checkpoint
        elif node["class_type"] == "LoadImage":
            inputs["image"] = image
        elif node["class_type"] == "MovaTextImageConditioner":
            inputs.update(width=64, height=64, frames=5)
        elif node["class_type"] == "MovaJointSampler":
            inputs["steps"] = 2
    return workflow


def test_composer_workflow_runs_end_to_end(comfy, mova_checkpoint):
    workflow = json.loads((WORKFLOWS / "mova_prompt_composer_api.json").read_text())
    assert workflow["3"]["inputs"]["prompt"] == ["9", 0]  # the conditioner reads the Composer's prompt
    result = comfy.run(_small_run(workflow, mova_checkpoint, comfy.images["first_frame"]), timeout=600)
    assert result.status == "success", result.error
    composed = compose_from_text_fields(**workflow["9"]["inputs"])
    assert _text(result, "10") == composed
    assert any(path.suffix == ".mp4" for path in result.outputs)


def test_enhancer_workflow_runs_end_to_end(comfy, mova_checkpoint):
    workflow = json.loads((WORKFLOWS / "mova_prompt_enhancer_api.json").read_text())
    assert workflow["3"]["inputs"]["prompt"] == ["11", 0]
    with _standin().StandInChatServer() as server:
        workflow["11"]["inputs"]["endpoint_url"] = server.base_url
        result = comfy.run(_small_run(workflow, mova_checkpoint, comfy.images["first_frame"]), timeout=600)
    assert result.status == "success", result.error
    assert '"Hello! Welcome to my kitchen."' in _text(result, "10")
    assert _text(result, "12").startswith("Prompt check: OK")
    assert len(server.requests) == 1
    assert any(path.suffix == ".mp4" for path in result.outputs)
