"""The model card: what it records, read back by the contract and the verifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_export_contract import small_tables

from export import ExportError, ExportOptions, contract, read_model_card
from export.card import model_card, summary, write_card


def _card(head: str = "cosine", **options):
    tables = small_tables(head=head, dim=4)
    index = {"type": "brute-force", "description": "Exact.", "recall_at_k": 1.0,
             "similar_items_recall_at_k": 1.0}
    extra = {"model": {"layer_norm": True}, "dataset": {"description": "synthetic"}}
    return tables, model_card(tables, ExportOptions(**options), index, extra)


def test_the_card_records_the_contract_and_its_sizes(tmp_path):
    tables, card = _card(k=3, top_dimensions=9)
    assert card["signatures"] == list(contract.SIGNATURE_NAMES)
    # m is capped at d; the contract reads the fixed sizes back from the card.
    assert contract.sizes_from_card(card) == ExportOptions(k=3, top_dimensions=9).sizes(4)
    assert card["top_dimensions"] == 4 and card["k"] == 3 and card["model"]["output_dim"] == 4
    assert card["model"]["head"] == "cosine" and card["model"]["layer_norm"] is True
    assert card["model"]["temperature"] == 0.5
    assert card["num_items"] == len(tables.items) and card["num_users"] == len(tables.users)
    assert card["cosine_is_training_objective"] is True
    assert card["dataset"] == {"description": "synthetic"}
    assert set(card["versions"]) == {"tensorflow", "tensorflow_recommenders", "scann", "python"}

    write_card(tmp_path, card)
    assert read_model_card(tmp_path) == card


def test_the_dot_head_card_says_cosine_is_not_its_objective():
    _, card = _card(head="dot")
    assert card["cosine_is_training_objective"] is False
    assert card["scores"] == "dot product (without temperature)"


def test_summary_lines():
    _, card = _card(k=3)
    card.update(verification={"checks": 36}, size_bytes=2_500_000, export_seconds=4.25)
    lines = summary(card).splitlines()
    assert lines[0] == "head: cosine (temperature 0.5, layer norm), embedding dim 4"
    assert "catalog: 9 items, 7 users; K=3" in lines
    assert "index recall@3: 1.0000 (users), 1.0000 (similar items)" in lines
    assert "verified in a fresh process: 36 checks passed" in lines
    assert lines[-1] == "size: 2.5 MB; exported in 4.2s"


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "is not an export of this project"),
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe\x00binary", "is not valid JSON"),
        (b"[1, 2]", "is not a JSON object"),
    ],
)
def test_an_unreadable_card_is_a_one_line_error(tmp_path, content, message):
    if content is not None:
        path = tmp_path / contract.MODEL_CARD
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
    with pytest.raises(ExportError, match=message) as error:
        read_model_card(tmp_path)
    assert "\n" not in str(error.value)


def test_numpy_values_are_numbers_and_other_objects_are_refused(tmp_path):
    _, card = _card()
    card["recall"] = np.float32(0.5)
    write_card(tmp_path, card)
    assert json.loads((tmp_path / contract.MODEL_CARD).read_text())["recall"] == 0.5
    card["bad"] = object()
    with pytest.raises(TypeError, match="cannot write object to the model card"):
        write_card(tmp_path, card)
