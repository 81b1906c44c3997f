"""Over-long rows are cut inside their text, never in the template: the cue the head reads stays."""

import pandas as pd
import pytest

from skray.config import DataConfig
from skray.data.collate import encode, format_rows
from skray.errors import DataError
from tests.conftest import minilm_tokenizer

TEMPLATE = "Review: {text}\nSentiment:"


def real_tokens(enc, row):
    return enc["input_ids"][row, : int(enc["attention_mask"][row].sum())].tolist()


@pytest.mark.parametrize("special", [True, False])
def test_long_text_is_cut_inside_the_template_and_short_rows_are_unchanged(special):
    tok = minilm_tokenizer()
    df = pd.DataFrame({"text": ["a fine film " * 60, "short and sweet", "fine"], "label": [1, 1, 0]})
    cfg = DataConfig(template=TEMPLATE, max_length=24)
    enc = encode(df, tok, cfg, add_special_tokens=special)
    long = real_tokens(enc, 0)
    assert len(long) == 24
    text = tok.decode(long, skip_special_tokens=True)
    assert text.startswith("review : a fine film")
    assert text.endswith(" sentiment :")
    if special:
        assert long[0] == tok.cls_token_id
        assert long[-1] == tok.sep_token_id
    before = tok(format_rows(df, cfg), add_special_tokens=special, truncation=True, max_length=24)["input_ids"]
    assert [real_tokens(enc, r) for r in (1, 2)] == before[1:]


def test_pairs_lose_tokens_from_the_longer_field_first():
    tok = minilm_tokenizer()
    df = pd.DataFrame(
        {"text": ["one two three", "red " * 40], "text_pair": ["blue " * 40, "green " * 40], "label": [0, 1]}
    )
    cfg = DataConfig(template="{text} ? {text_pair} Answer:", text_pair_column="hypothesis", max_length=20)
    enc = encode(df, tok, cfg, add_special_tokens=True)
    first, second = (tok.decode(real_tokens(enc, r), skip_special_tokens=True) for r in (0, 1))
    assert first.startswith("one two three? blue blue")
    assert first.endswith("blue answer :")
    assert len(real_tokens(enc, 0)) == len(real_tokens(enc, 1)) == 20
    head, tail = second.removesuffix(" answer :").split("?")
    assert abs(head.count("red") - tail.count("green")) <= 1  # both long: an even cut


def test_a_template_longer_than_max_length_is_a_one_line_error():
    df = pd.DataFrame({"text": ["word " * 50], "label": [0]})
    cfg = DataConfig(template="Read the following movie review carefully and answer: {text}\nSentiment:", max_length=8)
    with pytest.raises(
        DataError, match=r"data.template takes 1[0-9] tokens with an empty text but data.max_length is 8; raise"
    ):
        encode(df, minilm_tokenizer(), cfg, add_special_tokens=True)


def test_preflight_refuses_a_template_longer_than_max_length(tiny_llama_dir):
    """Caught on the driver before anything launches, not in the workers."""
    from skray.config import parse_config
    from skray.preflight import preflight

    cfg = parse_config(
        {
            "backbone": {"name": tiny_llama_dir},
            "method": {"head": "linear"},
            "data": {"template": "{text}" + " and so on" * 10, "max_length": 8},
        }
    )
    with pytest.raises(DataError, match="data.template takes .* tokens with an empty text but data.max_length is 8"):
        preflight(cfg)
