"""Write a tiny random-weight MOVA checkpoint in the official folder layout.

Same file names, config keys and state-dict keys as OpenMOSS-Team/MOVA-360p (sharded `video_dit` with its
index, `model.safetensors` for the text encoder, a UMT5-style Unigram tokenizer), with small dimensions, so
the whole pack (loader, validation, sampling, decoding, the ComfyUI nodes) can run on a CPU in seconds.
The weights are random: the output is noise-like video and audio, not a meaningful clip.

`python -m mova_model tiny-checkpoint DST [--seed N]`
"""

from __future__ import annotations

import json
import logging
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
from safetensors.torch import save_file

from ..bounds import SEED
from ..checks import CheckError, check_writable_folder
from ..cli_args import CliParser, refuse
from .folder import build_meta_module
from .configs import (AudioDiTConfig, AudioVAEConfig, BridgeConfig, SchedulerConfig, TextEncoderConfig,
                      VideoDiTConfig, VideoVAEConfig)
from ..network.ops import init_random_

logger = logging.getLogger(__name__)

COMMON_WORDS = ("a an the man woman dog cat says speaks sings hello hi in on at kitchen street room and with "
                "audio features music sound voice laughs barks walks looks camera video this has no subtitles").split()


@dataclass
class TinySpec:
    """Sizes of the tiny checkpoint. Audio: `sample_rate` Hz, hop = prod(encoder_rates) samples."""

    z_dim: int = 4
    text_dim: int = 32
    video_dim: int = 48
    video_heads: int = 2
    video_layers: int = 3
    audio_dim: int = 32
    audio_heads: int = 2
    audio_layers: int = 2
    bridge_head_dim: int = 16
    audio_latent_dim: int = 8
    sample_rate: int = 16000
    encoder_rates: tuple = (4, 5, 8)
    vae_base_dim: int = 8
    boundary_ratio: float = 0.9
    shift: float = 5.0


def _save(module_state: Dict[str, torch.Tensor], folder: Path, prefix: str, shards: int = 1) -> None:
    """Save a state dict as one file, or as `shards` files plus the diffusers/transformers index."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in module_state.items()}
    if shards <= 1:
        save_file(state, str(folder / f"{prefix}.safetensors"))
        return
    keys = list(state)
    per = -(-len(keys) // shards)
    weight_map = {}
    total = 0
    for i in range(shards):
        part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
        name = f"{prefix}-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{prefix}.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def write_tokenizer(folder: Path) -> int:
    """A small UMT5-style tokenizer (Unigram, Metaspace, `</s>` appended, pad 0 / eos 1 / unk 2) as
    T5TokenizerFast files; returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces: List[tuple] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for ch in string.ascii_letters + string.digits + string.punctuation:
        pieces += [(ch, -5.0), ("\u2581" + ch, -5.5)]
    pieces += [("\u2581" + word, -3.0) for word in COMMON_WORDS]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    fast = T5TokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=512)
    fast.save_pretrained(str(folder))
    return len(pieces)


def tiny_configs(spec: TinySpec, vocab_size: int) -> Dict[str, dict]:
    """The config.json contents of every component, with the official keys."""
    video = {"_class_name": "WanModel", "dim": spec.video_dim, "in_dim": 2 * spec.z_dim + 4, "ffn_dim": 2 * spec.video_dim,
             "out_dim": spec.z_dim, "text_dim": spec.text_dim, "freq_dim": 32, "eps": 1e-6, "patch_size": [1, 2, 2],
             "num_heads": spec.video_heads, "num_layers": spec.video_layers, "has_image_input": False,
             "has_image_pos_emb": False, "has_ref_conv": False, "add_control_adapter": False,
             "in_dim_control_adapter": 24, "seperated_timestep": False, "require_vae_embedding": True,
             "require_clip_embedding": False, "fuse_vae_embedding_in_latents": False}
    audio = dict(video, _class_name="WanAudioModel", dim=spec.audio_dim, in_dim=spec.audio_latent_dim,
                 out_dim=spec.audio_latent_dim, ffn_dim=2 * spec.audio_dim, patch_size=[1],
                 num_heads=spec.audio_heads, num_layers=spec.audio_layers, require_vae_embedding=False,
                 vae_type="dac")
    hop = 1
    for rate in spec.encoder_rates:
        hop *= rate
    bridge = {"_class_name": "DualTowerConditionalBridge", "visual_layers": spec.video_layers,
              "audio_layers": spec.audio_layers, "visual_hidden_dim": spec.video_dim,
              "audio_hidden_dim": spec.audio_dim, "audio_fps": spec.sample_rate / hop, "head_dim": spec.bridge_head_dim,
              "interaction_strategy": "full", "apply_cross_rope": True, "apply_first_frame_bias_in_rope": False,
              "trainable_condition_scale": False, "pooled_adaln": False}
    dac = {"_class_name": "DAC", "encoder_dim": 4, "encoder_rates": list(spec.encoder_rates),
           "latent_dim": spec.audio_latent_dim, "decoder_dim": 16, "decoder_rates": list(reversed(spec.encoder_rates)),
           "n_codebooks": 9, "codebook_size": 1024, "codebook_dim": 8, "quantizer_dropout": False,
           "sample_rate": spec.sample_rate, "continuous": True, "use_weight_norm": False}
    g = torch.Generator().manual_seed(0)
    vae = {"_class_name": "AutoencoderKLWan", "base_dim": spec.vae_base_dim, "decoder_base_dim": None,
           "z_dim": spec.z_dim, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 1, "attn_scales": [],
           "temperal_downsample": [False, True, True], "dropout": 0.0,
           "latents_mean": [round(float(v), 4) for v in torch.randn(spec.z_dim, generator=g) * 0.5],
           "latents_std": [round(float(v), 4) for v in 1.0 + torch.rand(spec.z_dim, generator=g)],
           "is_residual": False, "in_channels": 3, "out_channels": 3, "patch_size": None,
           "scale_factor_temporal": 4, "scale_factor_spatial": 8}
    text = {"architectures": ["UMT5EncoderModel"], "model_type": "umt5", "d_model": spec.text_dim, "d_ff": 2 * spec.text_dim,
            "d_kv": 8, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2, "vocab_size": vocab_size,
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
            "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
            "layer_norm_epsilon": 1e-6, "dropout_rate": 0.1, "initializer_factor": 1.0, "pad_token_id": 0,
            "eos_token_id": 1, "decoder_start_token_id": 0, "tie_word_embeddings": False, "scalable_attention": True,
            "tokenizer_class": "T5Tokenizer", "is_encoder_decoder": True, "classifier_dropout": 0.0}
    scheduler = {"_class_name": "FlowMatchPairScheduler", "num_inference_steps": 50, "num_train_timesteps": 1000,
                 "shift": spec.shift, "sigma_max": 1.0, "sigma_min": 0.003 / 1.002, "inverse_timesteps": False,
                 "extra_one_step": True, "reverse_sigmas": False, "exponential_shift": False,
                 "exponential_shift_mu": None, "shift_terminal": None}
    return {"video_dit": video, "video_dit_2": video, "audio_dit": audio, "dual_tower_bridge": bridge,
            "audio_vae": dac, "video_vae": vae, "text_encoder": text, "scheduler": scheduler}


CONFIG_CLASSES = {"video_dit": VideoDiTConfig, "video_dit_2": VideoDiTConfig, "audio_dit": AudioDiTConfig,
                  "dual_tower_bridge": BridgeConfig, "audio_vae": AudioVAEConfig, "video_vae": VideoVAEConfig,
                  "text_encoder": TextEncoderConfig, "scheduler": SchedulerConfig}


def write_tiny_checkpoint(dest: Path | str, seed: int = 0, spec: Optional[TinySpec] = None) -> Path:
    """Write the checkpoint to `dest` (created; existing files are overwritten) and return its path."""
    dest = Path(dest)
    spec = spec or TinySpec()
    dest.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(dest / "tokenizer")
    configs = tiny_configs(spec, vocab)
    _write_json(dest / "scheduler" / "scheduler_config.json", configs["scheduler"])
    generator = torch.Generator().manual_seed(int(seed))
    for component in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge", "audio_vae", "video_vae", "text_encoder"):
        data = configs[component]
        _write_json(dest / component / "config.json", data)
        config = CONFIG_CLASSES[component].from_dict(data)
        module = build_meta_module(component, config)
        init_random_(module, generator)
        state = module.state_dict()
        if component == "text_encoder":
            state.pop("encoder.embed_tokens.weight", None)  # tied to shared.weight, as transformers saves it
        prefix = "model" if component == "text_encoder" else "diffusion_pytorch_model"
        _save(state, dest / component, prefix, shards=2 if component == "video_dit" else 1)
    index = {"_class_name": "MOVA", "_diffusers_version": "0.36.0", "boundary_ratio": spec.boundary_ratio,
             "audio_vae_type": "dac",
             "audio_dit": ["mova.diffusion.models.wan_audio_dit", "WanAudioModel"],
             "audio_vae": ["mova.diffusion.models.dac_vae", "DAC"],
             "dual_tower_bridge": ["mova.diffusion.models.interactionv2", "DualTowerConditionalBridge"],
             "scheduler": ["mova.diffusion.schedulers.flow_match_pair", "FlowMatchPairScheduler"],
             "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer": ["transformers", "T5TokenizerFast"],
             "video_dit": ["mova.diffusion.models.wan_video_dit", "WanModel"],
             "video_dit_2": ["mova.diffusion.models.wan_video_dit", "WanModel"],
             "video_vae": ["diffusers", "AutoencoderKLWan"]}
    _write_json(dest / "model_index.json", index)
    logger.info("wrote a tiny random-weight MOVA checkpoint to %s", dest)
    return dest


def tiny_checkpoint_cli(argv: List[str]) -> int:
    parser = CliParser(prog="python -m mova_model tiny-checkpoint", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to write (created)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    parser.add_argument("--six-heads", action="store_true",
                        help="6 heads in every attention (video 48, audio 48 wide, bridge heads of 8), so sequence "
                             "parallelism (Ulysses 2 and 3) can split them")
    args = parser.parse_or_status(argv)
    if isinstance(args, int):  # --help, or the parser's one `error:` line
        return args
    try:
        SEED.check("--seed", args.seed)
        if args.dest.exists() and not args.dest.is_dir():
            raise CheckError(f"{args.dest} is a file; give a folder to write the checkpoint in")
        check_writable_folder(args.dest, "tiny-checkpoint")
        spec = TinySpec(video_heads=6, audio_dim=48, audio_heads=6, bridge_head_dim=8) if args.six_heads else None
        path = write_tiny_checkpoint(args.dest, seed=args.seed, spec=spec)
    except (ValueError, OSError) as exc:
        return refuse(str(exc))
    sys.stdout.write(f"{path}\n")
    return 0
