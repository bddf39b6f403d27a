"""Decoder-LLM classifiers (``Qwen2/Qwen3/Llama/Mistral/Gemma/GPT2ForSequenceClassification``).

TorchScript tracing of these models in transformers 4.57 crashes inside
``masking_utils.create_causal_mask`` (its vmap-built masks do not trace), and the
dynamo exporter needs onnxscript, which the export stage does not carry. The
models accept a ready 4D mask and then skip that code entirely, so this wrapper
builds the causal + padding mask (and the sliding-window one where the config
asks for it) from ``attention_mask`` with plain tensor ops, runs the decoder,
and pools the score head's output on the last token exactly as transformers'
sequence-classification heads do: the rightmost position whose id is not the
config's ``pad_token_id`` (or the last one when there is none), here also never
a padding position. The service pads on the right; with real tokens always
first, each text sees the same positions and keys alone or in a batch.
"""

from __future__ import annotations

from typing import Any

import torch

DECODER_MODEL_TYPES = ("gemma", "gpt2", "llama", "mistral", "qwen2", "qwen3")
INPUT_NAMES = ["input_ids", "attention_mask"]


class DecoderClassifier(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        # A transformers *ForSequenceClassification model; torch types its config, base_model_prefix
        # and score head as plain Module attributes (Tensor | Module), so they are read untyped here.
        hf_model: Any = model
        config = hf_model.config
        self.base: torch.nn.Module = getattr(model, hf_model.base_model_prefix)
        self.score: torch.nn.Module = hf_model.score
        self.pad_token_id = config.pad_token_id
        self.layer_types = sorted(set(getattr(config, "layer_types", None) or []))
        window = getattr(config, "sliding_window", None)
        # Mistral applies its window to every layer; models with layer_types say per layer.
        uses_window = "sliding_attention" in self.layer_types or (
            not self.layer_types and window is not None and config.model_type == "mistral"
        )
        self.sliding_window = int(window) if uses_window and window else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        causal = positions[None, :] <= positions[:, None]  # (query, key)
        keys = attention_mask.bool()[:, None, None, :]
        masks = {"full_attention": self._additive(causal[None, None] & keys)}
        if self.sliding_window is not None:
            recent = positions[None, :] > positions[:, None] - self.sliding_window
            masks["sliding_attention"] = self._additive((causal & recent)[None, None] & keys)
        mask: Any = masks if self.layer_types else masks.get("sliding_attention", masks["full_attention"])
        hidden = self.base(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = self.score(hidden)
        valid = attention_mask.bool()
        if self.pad_token_id is not None:
            valid = valid & (input_ids != self.pad_token_id)
        last = (positions.to(torch.int32)[None, :] * valid.to(torch.int32)).argmax(-1)
        return logits[torch.arange(input_ids.shape[0], device=input_ids.device), last]

    @staticmethod
    def _additive(keep: torch.Tensor) -> torch.Tensor:
        blocked = torch.full(keep.shape, torch.finfo(torch.float32).min, dtype=torch.float32)
        return torch.where(keep, torch.zeros_like(blocked), blocked)
