"""The prompt nodes load in the real frontend and run when queued from the page.

The Enhancer is pointed at a small OpenAI-compatible server started here on 127.0.0.1
(tests/mova_model/prompt/standin_openai.py), which STANDS IN FOR THE REMOTE CHAT SERVICE.
"""
import importlib.util
import sys

from host_fixtures import REPO_ROOT

COMPOSER = {
    "class_type": "MovaPromptComposer",
    "inputs": {
        "scene": "A woman in a red coat stands at a bus stop in the rain",
        "action": "She checks her watch\nA bus pulls up",
        "speakers": "Mia: the woman in the red coat",
        "dialogue": "Mia (sighing): Finally.",
        "sound_effects": "the hiss of bus brakes",
        "ambience": "steady rain on the shelter roof",
        "music": "",
        "no_subtitles": True,
    },
}


def _standin():
    if "standin_openai" not in sys.modules:
        path = REPO_ROOT / "tests" / "mova_model" / "prompt" / "standin_openai.py"
        spec = importlib.util.spec_from_file_location("standin_openai", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["standin_openai"] = module
        spec.loader.exec_module(module)
    return sys.modules["standin_openai"]


def _workflow(endpoint_url: str) -> dict:
    return {
        "1": COMPOSER,
        "2": {
            "class_type": "MovaPromptEnhancer",
            "inputs": {
                "text": 'Mia waits for the bus in the rain and sighs "Finally." when it arrives.',
                "backend": "openai_compatible", "endpoint_url": endpoint_url, "model_name": "stand-in",
                "api_key_env": "OPENAI_API_KEY", "timeout_s": 30, "local_model": "(none)", "no_subtitles": True,
                "on_failure": "fallback", "max_new_tokens": 256, "temperature": 0.0, "rewrite_seed": 21,
                "first_frame_description": "A woman in a red coat at a rainy bus stop.",
                "fallback_prompt": ["1", 0],
            },  # fmt: skip
        },
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["2", 1]}},
    }


def test_prompt_nodes_load_and_run_from_the_page(frontend):
    with _standin().StandInChatServer() as server:
        report = frontend.check(_workflow(server.base_url), "mova_prompt_nodes", queue=True, timeout=120)
    assert report["missing_node_types"] == [], report
    assert report["errored_nodes"] == [], report
    assert report["node_count"] == 4
    assert report["queue"]["status"] == "success", report
    assert {"3", "4"} <= set(report["queue"]["executed_nodes"])
    assert report["exit_code"] == 0, report
    (request,) = server.requests  # the page's run reached the (stand-in) chat service once
    assert "A woman in a red coat at a rainy bus stop." in request["json"]["messages"][1]["content"]


def test_shipped_prompt_workflows_load(frontend):
    for name in ("mova_prompt_composer_api", "mova_prompt_enhancer_api"):
        report = frontend.check(REPO_ROOT / "workflows" / "api" / f"{name}.json", name)
        assert report["missing_node_types"] == [], report
        assert report["errored_nodes"] == [], report
        assert report["page_errors"] == [], report
        assert report["exit_code"] == 0, report
