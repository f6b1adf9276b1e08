"""LoRA fine-tuning of MOVA (video and audio together), step-for-step equal to the official trainer.

No ComfyUI imports. Built on the model code of `mova_model.network` (the same ops factory and LoRA adapters)
and the memory system of `mova_model.memory`.
"""
