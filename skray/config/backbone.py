"""The ``backbone`` section: which frozen model to tune."""

from __future__ import annotations

from pydantic import Field, field_validator

from skray.assets import EMBEDDED_BACKBONES
from skray.config.section import Section, absolute_if_local


class BackboneConfig(Section):
    """Which frozen model to tune: an embedded name, a local HF folder or a hub id."""

    name: str = Field(
        default="smollm2-135m",
        description="The frozen model: an embedded name (smollm2-135m, minilm-l6), a local Hugging Face model "
        "folder, or a hub id",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run the Python code a model folder or hub repo ships (some architectures need it); "
        "turn on only for a source you trust",
    )

    @field_validator("name")
    @classmethod
    def _local_name_absolute(cls, name: str) -> str:
        return absolute_if_local(name, EMBEDDED_BACKBONES)
