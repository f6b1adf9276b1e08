"""Prompt nodes: compose or rewrite a prompt in the caption style MOVA was trained on.

Thin adapters over :mod:`mova_model.prompt` (all logic lives there):

- ``MovaPromptComposer``: structured fields -> one caption (deterministic, no model).
- ``MovaPromptEnhancer``: free text (+ an optional first-frame description from any captioning
  node) -> caption rewritten by a chat model, checked by the validator, with optional fallback.

Local language models live in ``<ComfyUI models dir>/mova_llm/<model folder>/`` (a Hugging Face
folder with ``config.json``, safetensors weights and tokenizer files); the folder name is
registered with ComfyUI's ``folder_paths`` so ``extra_model_paths.yaml`` can add more places.
"""
import logging
import os

import folder_paths
from comfy_api.latest import io, ui

from ..mova_model.prompt.backends import OpenAIChatBackend, TransformersChatBackend
from ..mova_model.prompt.composer import compose_from_text_fields
from ..mova_model.prompt.enhancer import ON_FAILURE_CHOICES, ON_FAILURE_ERROR, enhance_prompt
from .combos import check_combos

logger = logging.getLogger(__name__)

LLM_FOLDER_NAME = "mova_llm"
NO_LOCAL_MODEL = "(none)"
BACKEND_HTTP = "openai_compatible"
BACKEND_LOCAL = "local_transformers"


def register_llm_folder() -> str:
    """Register ``models/mova_llm`` with ``folder_paths`` (idempotent); return the default path."""
    default = os.path.join(folder_paths.models_dir, LLM_FOLDER_NAME)
    folder_paths.add_model_folder_path(LLM_FOLDER_NAME, default, is_default=True)
    return default


def local_llm_folders() -> list[str]:
    """Model folders (holding ``config.json``) under every ``mova_llm`` path, one or two levels deep.

    Names are relative with ``/`` (``Qwen2.5-3B-Instruct`` or ``Qwen/Qwen2.5-3B-Instruct``), sorted.
    """
    names = set()
    for root in folder_paths.get_folder_paths(LLM_FOLDER_NAME):
        if not os.path.isdir(root):
            continue
        for entry in os.listdir(root):
            path = os.path.join(root, entry)
            if os.path.isfile(os.path.join(path, "config.json")):
                names.add(entry)
            elif os.path.isdir(path):
                for sub in os.listdir(path):
                    if os.path.isfile(os.path.join(path, sub, "config.json")):
                        names.add(f"{entry}/{sub}")
    return sorted(names)


def local_llm_path(name: str) -> str:
    """Absolute folder of the local model ``name``; ``ValueError`` saying where it was looked for."""
    roots = folder_paths.get_folder_paths(LLM_FOLDER_NAME)
    if name and name != NO_LOCAL_MODEL and ".." not in name.split("/"):
        for root in roots:
            candidate = os.path.join(root, *name.split("/"))
            if os.path.isfile(os.path.join(candidate, "config.json")):
                return candidate
    raise ValueError(
        f"No local language model selected or found ({name!r}). Put a Hugging Face causal-LM folder "
        f"(config.json, *.safetensors, tokenizer files) in one of: {', '.join(roots)}; then refresh "
        "ComfyUI and pick it in local_model, or use the openai_compatible backend."
    )


def _folder_bytes(folder: str) -> int:
    """Total size of the safetensors files in ``folder``, in bytes (a load-size estimate)."""
    return sum(
        os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".safetensors")
    )


register_llm_folder()


class MovaPromptComposer(io.ComfyNode):
    """Structured fields -> one prompt in MOVA's training-caption shape (no model, deterministic)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaPromptComposer",
            display_name="MOVA Prompt Composer",
            category="MOVA/prompt",
            description=(
                "Builds a prompt in the shape MOVA was trained on: scene, action in order, quoted "
                "dialogue with who says it and how, then a paragraph on the audio. Dialogue is kept "
                "exactly as typed (any language)."
            ),
            inputs=[
                io.String.Input(
                    "scene", multiline=True, default="",
                    tooltip="What the first frame shows: subjects, place, light, framing, any readable text.",
                ),
                io.String.Input(
                    "action", multiline=True, default="",
                    tooltip="What happens, in order; one event per line.",
                ),
                io.String.Input(
                    "speakers", multiline=True, default="",
                    tooltip="One speaker per line, 'Name: how they look', e.g. 'Anna: the woman in the red coat'.",
                ),
                io.String.Input(
                    "dialogue", multiline=True, default="",
                    tooltip=(
                        "One spoken line per row, 'Name (delivery): words', e.g. 'Anna (softly): Are you "
                        "coming?'. Delivery is optional; write it as it should follow 'says'. Kept verbatim."
                    ),
                ),
                io.String.Input(
                    "sound_effects", multiline=True, default="",
                    tooltip="Sound effects as a phrase, e.g. 'a door slamming and footsteps on gravel'.",
                ),
                io.String.Input(
                    "ambience", multiline=True, default="",
                    tooltip="Background sound as a phrase, e.g. 'light rain on the window'.",
                ),
                io.String.Input(
                    "music", multiline=True, default="",
                    tooltip="Music as a phrase, e.g. 'a slow solo piano melody'. Leave empty for none.",
                ),
                io.Boolean.Input(
                    "no_subtitles", default=True,
                    tooltip="Append 'This video has no subtitles.' (MOVA's training tag for subtitle-free clips).",
                ),
            ],
            outputs=[io.String.Output(display_name="prompt")],
        )

    @classmethod
    def execute(cls, scene="", action="", speakers="", dialogue="", sound_effects="", ambience="", music="",
                no_subtitles=True) -> io.NodeOutput:
        prompt = compose_from_text_fields(
            scene=scene, action=action, speakers=speakers, dialogue=dialogue, sound_effects=sound_effects,
            ambience=ambience, music=music, no_subtitles=no_subtitles,
        )
        return io.NodeOutput(prompt, ui=ui.PreviewText(prompt))


class MovaPromptEnhancer(io.ComfyNode):
    """Free text (+ first-frame description) -> MOVA-style caption rewritten by a chat model, then checked."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        register_llm_folder()
        return io.Schema(
            node_id="MovaPromptEnhancer",
            display_name="MOVA Prompt Enhancer",
            category="MOVA/prompt",
            description=(
                "Rewrites your idea into MOVA's caption style with a language model (an OpenAI-compatible "
                "server or a local model in models/mova_llm), then checks that every quoted line survived "
                "verbatim and that the prompt ends with an audio paragraph."
            ),
            inputs=[
                io.String.Input(
                    "text", multiline=True, default="",
                    tooltip="Your idea: what happens, who says what (in quotes), what is heard.",
                ),
                io.Combo.Input(
                    "backend", options=[BACKEND_HTTP, BACKEND_LOCAL], default=BACKEND_HTTP,
                    tooltip="openai_compatible: any /v1/chat/completions server. local_transformers: a model folder in models/mova_llm.",
                ),
                io.String.Input(
                    "endpoint_url", default="http://127.0.0.1:8000/v1",
                    tooltip="Base URL of the OpenAI-compatible API, e.g. https://api.openai.com/v1 or http://127.0.0.1:11434/v1.",
                ),
                io.String.Input(
                    "model_name", default="",
                    tooltip="Model name on that server (e.g. gpt-4o-mini, qwen-plus, the name your local server uses).",
                ),
                io.String.Input(
                    "api_key_env", default="OPENAI_API_KEY",
                    tooltip="NAME of the environment variable holding the API key (the key is never stored in the workflow). Empty: no key.",
                ),
                io.Int.Input(
                    "timeout_s", default=120, min=1, max=3600,
                    tooltip="Total seconds the request may take (connect, wait and the whole answer). Cancel stops it at any time.",
                ),
                io.Combo.Input(
                    "local_model", options=[NO_LOCAL_MODEL, *local_llm_folders()], default=NO_LOCAL_MODEL,
                    tooltip="Causal LM folder under models/mova_llm (used by local_transformers).",
                ),
                io.Boolean.Input(
                    "no_subtitles", default=True,
                    tooltip="Append 'This video has no subtitles.' to the result.",
                ),
                io.Combo.Input(
                    "on_failure", options=list(ON_FAILURE_CHOICES), default=ON_FAILURE_ERROR,
                    tooltip="If the rewrite fails the check (or the backend fails): error = stop with the reason; fallback = use fallback_prompt; keep = use the rewrite anyway.",
                ),
                io.Int.Input("max_new_tokens", default=512, min=16, max=4096, tooltip="Longest answer, in tokens."),
                io.Float.Input("temperature", default=0.7, min=0.0, max=2.0, step=0.05,
                               tooltip="Sampling temperature; 0 = greedy (local) / deterministic where supported."),
                io.Int.Input(
                    "rewrite_seed", default=0, min=0, max=2**31 - 1,
                    tooltip=(
                        "Sampling seed (sent to the server as 'seed'; used for local sampling). Change it for "
                        "another rewrite; while inputs stay the same ComfyUI reuses the last rewrite."
                    ),
                ),
                io.String.Input(
                    "first_frame_description", multiline=True, default="", optional=True,
                    tooltip="What the first frame shows; connect any captioning node's STRING output here.",
                ),
                io.String.Input(
                    "fallback_prompt", optional=True, force_input=True,
                    tooltip="Prompt to use when the rewrite fails and on_failure = fallback (e.g. MOVA Prompt Composer's output).",
                ),
            ],
            outputs=[
                io.String.Output(display_name="prompt"),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(cls, text, backend, endpoint_url, model_name, api_key_env, timeout_s, local_model, no_subtitles,
                on_failure, max_new_tokens, temperature, rewrite_seed, first_frame_description="",
                fallback_prompt="") -> io.NodeOutput:
        check_combos(cls, backend=backend, local_model=local_model, on_failure=on_failure)
        import comfy.model_management as mm

        if backend == BACKEND_LOCAL:
            folder = local_llm_path(local_model)
            device = mm.get_torch_device()
            mm.free_memory(_folder_bytes(folder) * 1.3, device)  # make room: evict idle models if needed
            chat = TransformersChatBackend(folder, device=str(device))
        else:
            chat = OpenAIChatBackend(endpoint_url, model_name, api_key_env=api_key_env, timeout_s=timeout_s)
        try:
            result = enhance_prompt(
                text, chat, first_frame=first_frame_description or "", no_subtitles=no_subtitles,
                on_failure=on_failure, fallback_prompt=fallback_prompt or "", max_new_tokens=max_new_tokens,
                temperature=temperature, seed=rewrite_seed,
                cancel_check=mm.throw_exception_if_processing_interrupted,  # Cancel / POST /interrupt
            )
        finally:
            if backend == BACKEND_LOCAL:
                mm.soft_empty_cache()  # the local model was dropped after generating; return its memory
        report = result.report_text()
        return io.NodeOutput(result.prompt, report, ui=ui.PreviewText(f"{result.prompt}\n\n---\n{report}"))


NODES = [MovaPromptComposer, MovaPromptEnhancer]
