"""The ``data`` section: the labelled rows, how one becomes model input, and what "best" means for its task."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from skray.assets import EMBEDDED_DATASETS
from skray.config.section import Section, absolute_if_local


class DataConfig(Section):
    """Which labelled data to use and how to turn a row into model input.

    ``task: token_classification`` reads a list of words (text_column) and one tag per word
    (label_column), e.g. IOB2 NER tags; everything else is one label per row.
    """

    name: str = Field(
        default="rotten_tomatoes_critics",
        description="The labelled data: an embedded set (rotten_tomatoes_critics, crowdflower_tweets, "
        "trec_questions), a .csv/.jsonl/.parquet file, a folder of per-split files, or a hub dataset id",
    )
    task: Literal["classification", "token_classification"] = Field(
        default="classification",
        description="classification: one label per row; token_classification: one tag per word (e.g. IOB2 NER), "
        "needs method.head linear",
    )
    text_column: str = Field(
        default="text",
        description="The column holding the input text (for token_classification: a list of words)",
    )
    text_pair_column: str | None = Field(
        default=None,
        description="The column holding a row's second text, for sentence-pair tasks (then the template needs "
        "{text_pair})",
    )
    label_column: str = Field(
        default="label",
        description="The column holding each row's label (for token_classification: one tag per word)",
    )
    labels: list[str] | None = Field(
        default=None,
        min_length=2,
        description="The label names, in class order; unset: the sorted labels seen in train. Any other label in "
        "the data is an error",
    )
    group_column: str | None = Field(
        default=None,
        description="Rows sharing this column's value stay in one split when skray makes the split (e.g. a movie "
        "id, so no movie leaks into evaluation); unset: equal texts stay together",
    )
    template: str = Field(
        default="{text}",
        description="How a row becomes model input; must contain {text} (and {text_pair} for pairs); the tail, "
        "e.g. '\\nSentiment:', is the cue the head reads and is never cut",
    )
    max_length: int = Field(
        default=128,
        ge=8,
        le=8192,
        description="Tokens per input row, template included; a longer row is cut inside its text. Raise it for "
        "long texts, lower it for speed and memory",
    )
    max_train_samples: int | None = Field(
        default=None, ge=1, description="Cap on training rows (a seeded sample); unset: all of them"
    )
    max_eval_samples: int | None = Field(
        default=None, ge=1, description="Cap on validation rows (a seeded sample), to make evaluations cheaper"
    )
    max_test_samples: int | None = Field(
        default=None, ge=1, description="Cap on test rows (a seeded sample), to make the final test cheaper"
    )
    validation_fraction: float = Field(
        default=0.1,
        gt=0,
        lt=0.5,
        description="Share of rows carved out for validation when the data has no validation split",
    )
    test_fraction: float = Field(
        default=0.1, gt=0, lt=0.5, description="Share of rows carved out for test when the data has no test split"
    )
    drop_missing: bool = Field(
        default=False,
        description="Rows with no text, label or group: an error naming them, or dropped (and counted) if true",
    )

    @field_validator("name")
    @classmethod
    def _local_name_absolute(cls, name: str) -> str:
        return absolute_if_local(name, EMBEDDED_DATASETS)

    @model_validator(mode="after")
    def _template_has_text(self) -> DataConfig:
        if "{text}" not in self.template:
            raise ValueError("data.template must contain '{text}'")
        if self.text_pair_column and "{text_pair}" not in self.template:
            raise ValueError("data.template must contain '{text_pair}' when text_pair_column is set")
        if self.task == "token_classification" and (self.template != "{text}" or self.text_pair_column):
            raise ValueError(
                "data.task token_classification reads the words as they are; "
                "remove data.template and data.text_pair_column"
            )
        return self


def selection_metric(task: str, select_by: str = "accuracy") -> str:
    """What "best" means, in the worker, the search and the table alike (``train.select_by``): validation
    accuracy (``acc``) or macro-F1 (``f1``); span F1 for token classification, whatever select_by (most
    tags are O, so accuracy says little)."""
    return "f1" if task == "token_classification" or select_by == "macro_f1" else "acc"
