"""The decoder's shape, declared once for the models and for the training configs that build them.

Models and training sections inherit these fields; each subclass may set its own defaults in
`shape_defaults` (a teacher is wider than a student) without declaring the fields again.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A config: an unknown key is an error, not a silently ignored typo."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class DecoderShape(Section):
    """Width, depth and window of a causal decoder (models/blocks.Decoder)."""

    shape_defaults: ClassVar[dict[str, Any]] = {}

    d_model: int = Field(64, gt=0)
    n_layers: int = Field(2, gt=0)
    n_heads: int = Field(2, gt=0)
    mlp_hidden: int = Field(128, gt=0)
    max_len: int = Field(200, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    pos_std: float = Field(1.0, gt=0)  # initial std of the position embeddings (blocks.Decoder)

    @model_validator(mode="before")
    @classmethod
    def _class_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and cls.shape_defaults:
            return {**cls.shape_defaults, **data}
        return data

    @model_validator(mode="after")
    def _heads_divide_width(self) -> DecoderShape:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads "
                             f"({self.n_heads})")
        return self

    def shape(self) -> dict[str, Any]:
        """Just the shape fields, to build a model config from a training section."""
        return {name: getattr(self, name) for name in DecoderShape.model_fields}
