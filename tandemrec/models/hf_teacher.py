"""A Hugging Face `transformers` causal language model as the teacher's sequence model.

Lite-LLM4Rec (Wang et al., 2024, "Rethinking Large Language Model Architectures for Sequential
Recommendations") reads a user's history with a pretrained LLM decoder: an item model turns
each item into one vector, the vectors enter the LLM in place of token embeddings
(`inputs_embeds`), and an item projection head scores the whole catalog from the last hidden
state. This module is that sequence model for any causal-LM config of `transformers` (LLaMA,
Qwen2, Mistral, GPT-2, ...), behind the same interface as the native decoder
(models/blocks.Decoder), so the teacher's item tower, intent tokens and head are unchanged:

    x (B, T, D) item vectors, valid (B, T) bool -> (B, T or 1, D) final hidden states

Items are the inputs, so the backbone's token table is never read: it is cut to one row and
the config says `vocab_size: 1` (a LLaMA-3's 128k x 2048 table would otherwise be most of the
memory and of the checkpoint). Low-rank adapters (LoRA, Hu et al., 2021) come from `peft` when
it is installed and are merged into the weights before the teacher is saved, so a checkpoint
is always a plain backbone that rebuilds from its config alone.

Nothing here reads or downloads files: a backbone is built from a config dict (random init,
then a checkpoint's weights) or handed in already loaded (train/hf_backbone.py).
"""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tandemrec.models.blocks import RMSNorm
from tandemrec.models.dropout import Dropout

if TYPE_CHECKING:
    from transformers import PretrainedConfig

# Config keys that describe the token vocabulary: items replace tokens, so they do not apply.
TOKEN_KEYS = {"vocab_size": 1, "pad_token_id": None, "bos_token_id": None, "eos_token_id": None}
# Models that are encoders unless told otherwise (BERT-like entries of the causal-LM table)
# read causally only with is_decoder; decoders ignore it. HFDecoder.check_causal makes sure.
ITEM_KEYS = {**TOKEN_KEYS, "is_decoder": True}


class BackboneUnavailable(RuntimeError):
    """A Hugging Face backbone was asked for, but `transformers` (or `peft`) is not installed."""


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise BackboneUnavailable(
            "this teacher has a Hugging Face transformers backbone, and transformers is not "
            "installed: pip install 'tandemrec[train]' (or transformers)") from exc
    return transformers


def is_causal_lm(config: PretrainedConfig) -> bool:
    """Whether transformers has a causal-LM head for this config's model type."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return type(config) in MODEL_FOR_CAUSAL_LM_MAPPING


def items_config(config: PretrainedConfig | dict[str, Any]) -> dict[str, Any]:
    """The config a teacher saves: JSON values, no token vocabulary, float32, no source path."""
    values = (config if isinstance(config, dict)
              else json.loads(config.to_json_string(use_diff=False)))
    values = {**values, **ITEM_KEYS, "_name_or_path": ""}
    for key in ("dtype", "torch_dtype"):  # weights are kept in float32 (train/precision.py)
        values.pop(key, None)
    if "model_type" not in values:
        raise ValueError("a Hugging Face backbone config needs a model_type, e.g. llama")
    return values


def build_config(values: dict[str, Any]) -> PretrainedConfig:
    """A transformers config from a dict with a `model_type` (no file, no download)."""
    transformers = _transformers()
    values = dict(values)
    model_type = values.pop("model_type", None)
    if model_type not in transformers.CONFIG_MAPPING:
        raise ValueError(f"unknown Hugging Face model_type {model_type!r}; expected one of "
                         f"transformers' config types, e.g. llama, qwen2, mistral, gpt2")
    config = transformers.CONFIG_MAPPING[model_type].from_dict(values)
    if not is_causal_lm(config):
        raise ValueError(f"model_type {model_type!r} is not a causal language model "
                         f"(transformers has no AutoModelForCausalLM for it)")
    return config


class HFDecoder(nn.Module):
    """A transformers base model reading item vectors as `inputs_embeds`, plus a final RMSNorm."""

    def __init__(self, config: dict[str, Any], dropout: float,
                 backbone: nn.Module | None = None) -> None:
        """`config`: an items_config dict, built with random weights when `backbone` (a loaded
        transformers model of that config) is None."""
        super().__init__()
        transformers = _transformers()
        model: Any = backbone  # a transformers PreTrainedModel
        if model is None:
            model = transformers.AutoModel.from_config(build_config(items_config(config)))
        model = model.float()  # some checkpoints and configs say bf16: train in float32
        hidden = int(model.config.hidden_size)
        table = model.get_input_embeddings().weight  # (V, D)
        # Items enter at the scale the backbone's tokens had, not at unit RMS, so a pretrained
        # model sees inputs of the size it was trained on; learnt from there.
        scale = table.detach().float().pow(2).mean().sqrt().item()
        if table.shape[0] != 1:  # a pretrained vocabulary: cut it, it is never read
            model.set_input_embeddings(nn.Embedding(1, hidden))
        model.get_input_embeddings().weight.requires_grad_(False)
        for key, value in ITEM_KEYS.items():
            setattr(model.config, key, value)
        # Left-padded histories: positions count from each user's first item, as when a
        # transformers model generates from a left-padded batch. Some models take none.
        self.takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        self.backbone: Any = model
        self.in_scale = nn.Parameter(torch.tensor(scale if scale > 0 else 1.0))  # ()
        self.drop = Dropout(dropout)
        self.norm = RMSNorm(hidden)  # the item head reads unit-RMS states (models/teacher.py)
        self.lora: dict[str, Any] | None = None
        self.check_causal()

    def check_causal(self) -> None:
        """Refuse a backbone whose hidden states see later positions: the teacher would read
        the next item it is asked to predict."""
        where = self.norm.weight.device
        x = torch.randn(1, 4, self.norm.weight.shape[0],
                        generator=torch.Generator().manual_seed(0)).to(where)  # (1, 4, D)
        valid = torch.ones(1, 4, dtype=torch.bool, device=where)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            before = self(x, valid)
            x[:, -1] += 1.0
            after = self(x, valid)
        self.train(was_training)
        if not torch.allclose(before[:, :-1], after[:, :-1], atol=1e-5):
            name = getattr(self.backbone.config, "model_type", "?")
            raise ValueError(f"the {name} backbone is not causal: its earlier positions change "
                             f"with later inputs")

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the backbone's positions cover (None: no limit stated)."""
        limit = getattr(self.base_model().config, "max_position_embeddings", None)
        return int(limit) if limit else None

    def base_model(self) -> nn.Module:
        """The transformers model itself, under a LoRA wrapper while one is attached."""
        return self.backbone.get_base_model() if self.lora else self.backbone

    def forward(self, x: torch.Tensor, valid: torch.Tensor, last_only: bool = False
                ) -> torch.Tensor:
        """x: (B, T, D) input vectors, valid: (B, T) -> (B, T or 1, D) final hidden states."""
        x = self.drop(x * self.in_scale) * valid[..., None]  # (B, T, D); pads stay 0
        mask = valid.long()  # (B, T) 1 = item, 0 = left padding
        kwargs: dict[str, Any] = {}
        if self.takes_positions:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        out = self.backbone(inputs_embeds=x, attention_mask=mask, use_cache=False, **kwargs)
        h = out.last_hidden_state  # (B, T, D)
        return self.norm(h[:, -1:] if last_only else h)

    def add_lora(self, r: int, alpha: float, dropout: float = 0.0,
                 target_modules: list[str] | None = None) -> None:
        """Freeze the backbone and train rank-`r` adapters in it (the rest of the teacher, item
        tower, intent tokens and head, still trains in full)."""
        try:
            import peft
        except ImportError as exc:
            raise BackboneUnavailable("teacher.lora needs the peft package (pip install peft); "
                                      "without teacher.lora the backbone is fine-tuned in "
                                      "full") from exc
        spec = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                               target_modules=target_modules)
        try:
            self.backbone = peft.get_peft_model(self.backbone, spec)
        except ValueError as exc:  # no default target modules for this model type
            raise ValueError(f"teacher.lora: {exc}; name the layers in "
                             f"teacher.lora.target_modules") from exc
        self.lora = {"r": r, "alpha": alpha, "dropout": dropout,
                     "target_modules": target_modules}

    def merge_lora(self) -> None:
        """Fold the adapters into the weights: a plain backbone again (what checkpoints hold)."""
        if self.lora:
            self.backbone = self.backbone.merge_and_unload()
            self.lora = None
            for p in self.backbone.parameters():
                p.requires_grad_(True)
            self.backbone.get_input_embeddings().weight.requires_grad_(False)
