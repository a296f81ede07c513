"""Table-5 statistics: exact values on hand-made data, and the LIMA / Dolly / Alpaca reproduction."""

from __future__ import annotations

from pathlib import Path

import pytest

from im_pipeline.analysis.paper_reference import TABLE5_LENGTH_STATS
from im_pipeline.data import DataError, length_stats, load_records
from im_pipeline.data.phrasings import TEMPLATES_NO_INPUT, TEMPLATES_WITH_INPUT, phrase, template_index
from im_pipeline.data.stats import example_lengths, format_stats_table


def _rec(rid: str, *turns: str) -> dict:
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(len(turns))]
    return {
        "id": rid,
        "source": "t",
        "messages": [{"role": r, "content": c} for r, c in zip(roles, turns, strict=True)],
    }


RECS = [
    _rec("a", "one two three", "four five six seven eight nine"),  # 3 / 6 words
    _rec("b", "x\ty\nz  w", "v"),  # 4 / 1 words (tabs, newlines, double spaces separate)
    _rec("c", "p q", "r s", "t", "u v w"),  # multi-turn: 3 / 5 words
]


def test_example_lengths_count_role_markers() -> None:
    assert example_lengths(RECS[0]) == (4, 7)
    assert example_lengths(RECS[0], role_markers=False) == (3, 6)
    assert example_lengths(RECS[2]) == (5, 7)  # two user turns, two assistant turns, one marker each
    sys = {"messages": [{"role": "system", "content": "ignored words"}] + RECS[1]["messages"]}
    assert example_lengths(sys) == (5, 2)


def test_length_stats_exact() -> None:
    s = length_stats(RECS, role_markers=False)
    assert s["n"] == 3
    assert s["instruction_words_mean"] == pytest.approx(10 / 3, abs=1e-4)
    assert s["output_words_mean"] == pytest.approx(12 / 3, abs=1e-4)
    assert s["ratio"] == pytest.approx(10 / 12, abs=1e-6)  # ratio of means, not mean of ratios
    assert s["ratio_mean"] == pytest.approx((0.5 + 4 + 0.6) / 3, abs=1e-6)
    assert s["ratio_quantiles"]["p50"] == pytest.approx(0.6)
    assert s["n_multi_turn"] == 1 and s["n_empty_output"] == 0
    s2 = length_stats(RECS)
    assert s2["instruction_words_mean"] == pytest.approx(14 / 3, abs=1e-4)
    assert s2["output_words_mean"] == pytest.approx(16 / 3, abs=1e-4)
    assert length_stats([])["n"] == 0
    table = format_stats_table(s2, "t", reference={"ratio": 0.5})
    assert "0.8750" in table and "0.5" in table


def test_phrasings_seeded_by_id_and_keep_text() -> None:
    out = phrase("Name a colour.", "", "id-1", seed=3)
    assert "Name a colour." in out
    assert out == phrase("Name a colour.", "", "id-1", seed=3)
    with_input = phrase("Translate.", "Bonjour", "id-1", seed=3)
    assert "Translate." in with_input and "Bonjour" in with_input
    picks = {template_index(s, "id-1", len(TEMPLATES_NO_INPUT)) for s in range(50)}
    assert len(picks) > 5  # different seeds choose different phrasings
    assert all("{input}" in t for t in TEMPLATES_WITH_INPUT)


def _pct(a: float, b: float) -> float:
    return abs(a / b - 1) * 100


def test_lima_reproduces_table5_within_half_percent(data_dir: Path) -> None:
    s = length_stats(load_records("lima", data_dir))
    ref = TABLE5_LENGTH_STATS["lima"]
    assert s["n"] == 1029
    assert s["instruction_words_mean"] == pytest.approx(41.6589, abs=1e-3)
    assert s["output_words_mean"] == pytest.approx(442.5792, abs=1e-3)
    assert _pct(s["instruction_words_mean"], ref["instruction_words_mean"]) < 0.5
    assert _pct(s["output_words_mean"], ref["output_words_mean"]) < 0.5
    assert round(s["ratio"], 3) == ref["ratio"]
    # Counting contents only (no role markers) misses the paper by >2% on instructions.
    plain = length_stats(load_records("lima", data_dir), role_markers=False)
    assert _pct(plain["instruction_words_mean"], ref["instruction_words_mean"]) > 2


def test_instruction_templates_lengthen_dolly_and_alpaca(data_dir: Path) -> None:
    for name, paper in (("dolly_3k", 0.64), ("alpaca_5k", 0.57)):
        plain = length_stats(load_records(name, data_dir))
        templ = length_stats(load_records(name, data_dir, instruction_templates=True, seed=0))
        assert templ["output_words_mean"] == plain["output_words_mean"]
        assert templ["instruction_words_mean"] > plain["instruction_words_mean"] + 3
        assert templ["ratio"] > plain["ratio"]
        assert abs(templ["ratio"] - paper) < abs(plain["ratio"] - paper)


@pytest.mark.parametrize(
    ("name", "n", "instruction", "output", "ratio"),
    [
        ("paper_lima", 1030, 41.72, 442.75, 0.094),
        ("paper_dolly_3k", 2996, None, None, 0.644),
        ("paper_alpaca_5k", 5305, None, None, 0.567),
    ],
)
def test_paper_processed_sources_give_table5_exactly(
    data_dir: Path,
    name: str,
    n: int,
    instruction: float | None,
    output: float | None,
    ratio: float,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The paper's own processed files (paper_processed/ in the data dir, $IM_PIPELINE_DATA_DIR) give Table 5."""
    import json

    from im_pipeline_flows.cli import main

    if not (data_dir / "paper_processed").is_dir():
        pytest.skip(f"{data_dir}/paper_processed/ not found (the paper's processed files; see its SOURCE.md)")
    monkeypatch.setenv("IM_PIPELINE_DATA_DIR", str(data_dir))
    assert main(["data", "stats", name, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n"] == n
    assert round(out["ratio"], 3) == ratio
    if instruction is not None:
        assert round(out["instruction_words_mean"], 2) == instruction
        assert round(out["output_words_mean"], 2) == output
    assert out["paper_table5"]["ratio"] == round(ratio, 2 if name != "paper_lima" else 3)


def test_paper_source_missing_names_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"paper_processed/lima_data.jsonl.*ZhengxiangShi/InstructionModelling"):
        load_records("paper_lima", tmp_path)
