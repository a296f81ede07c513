"""The report as people see it: in the Prefect UI (inline figures, tables that fit) and its provenance lines."""

from __future__ import annotations

import base64
from pathlib import Path

from im_pipeline.analysis.aggregate import RunResults
from im_pipeline.analysis.run_files import DataStats, RunConfig
from im_pipeline.report.prefect_ui import UI_MAX_COLUMNS, for_prefect_ui
from im_pipeline.report.provenance import data_origin_text, describe, judge_text

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def test_figures_are_inlined_as_data_uris(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(PNG)
    md = "text\n\n![curves](figures/a.png)\n\n![gone](figures/missing.png)\n"
    out = for_prefect_ui(md, tmp_path)
    assert f"![curves](data:image/png;base64,{base64.b64encode(PNG).decode()})" in out
    assert "![gone](figures/missing.png)" in out  # a missing file stays a (visible) link


def _table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]
    )


def test_narrow_tables_are_kept_wide_ones_transposed_or_split(tmp_path: Path) -> None:
    narrow = _table(["a", "b"], [["1", "2"]])
    assert for_prefect_ui(narrow, tmp_path) == narrow
    # 8 columns, 2 rows → transposed: 3 columns, one row per former column
    wide = _table(["run", *(f"c{i}" for i in range(7))], [["r1", *"0123456"], ["r2", *"abcdefg"]])
    out = for_prefect_ui("intro\n\n" + wide + "\n\nafter", tmp_path).split("\n")
    assert out[:4] == ["intro", "", "| run | r1 | r2 |", "|---|---|---|"]
    assert out[4] == "| c0 | 0 | a |" and out[10] == "| c6 | 6 | g |" and out[-1] == "after"
    # 8 columns, 8 rows → split into tables that repeat the first column, none wider than the limit
    many = _table(
        ["run", *(f"c{i}" for i in range(7))], [[f"r{j}", *(str(j * 10 + i) for i in range(7))] for j in range(8)]
    )
    tables = for_prefect_ui(many, tmp_path).split("\n\n")
    assert len(tables) == 2
    for t in tables:
        header = t.split("\n")[0]
        assert header.startswith("| run |") and header.count("|") - 1 <= UI_MAX_COLUMNS
        assert len(t.split("\n")) == 10  # header, rule, 8 rows
    assert "| r7 | 75 | 76 |" in tables[1]


def test_tables_with_long_cells_are_split_to_fit(tmp_path: Path) -> None:
    long = "x" * 70
    table = _table(["set", "train", "held_out"], [["source", long, long], ["origin", long, long], ["n", "8", "4"]])
    parts = for_prefect_ui(table, tmp_path).split("\n\n")  # transposing would not help: split
    assert [p.split("\n")[0] for p in parts] == ["| set | train |", "| set | held_out |"]
    assert f"| source | {long} |" in parts[0] and "| n | 4 |" in parts[1]
    short = _table(["set", "train", "held_out"], [["source", long, long], ["n", "8", "4"]])
    assert for_prefect_ui(short, tmp_path).split("\n")[0] == "| set | source | n |"  # transposed fits


def test_judge_as_text() -> None:
    assert judge_text({"kind": "local_hf", "model": "smollm2-135m-instruct", "base_url_host": None}) == (
        "smollm2-135m-instruct (local model)"
    )
    assert judge_text({"kind": "openai", "model": "gpt-4", "base_url": "https://api.example.org/v1/x?key=1"}) == (
        "gpt-4 (OpenAI-compatible API at api.example.org)"
    )


def test_data_named_relative_to_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "lima").mkdir(parents=True)
    cfg = RunConfig.model_validate({"_resolved_data_dir": str(data)})
    assert data_origin_text(str(data / "lima" / "lima.json"), cfg) == "`lima/lima.json` in the data directory"
    assert data_origin_text("hub:GAIR/lima", cfg) == "the Hugging Face Hub (`GAIR/lima`)"
    assert data_origin_text(str(tmp_path / "mine.jsonl"), cfg) == "`mine.jsonl` (a local file given in the config)"
    assert str(tmp_path) not in data_origin_text(str(tmp_path / "mine.jsonl"), cfg)


def test_description_follows_the_resolved_config() -> None:
    raw = {
        "model": {"source": "smollm2-135m-instruct"},
        "data": {"train": "lima", "n": 8},
        "training": {"epochs": 1, "max_steps": -1},
        "arms": [{"name": "IT", "loss_mode": "it"}, {"name": "W", "loss_mode": "weighted", "prompt_loss_weight": 0.5}],
        "seeds": [0, 1],
    }
    cfg = RunConfig.model_validate(raw)
    run = RunResults(root=Path("runs/x"), experiment="x", config=cfg)
    assert describe(cfg, run) == (
        "`smollm2-135m-instruct` fine-tuned on 8 examples of `lima` (1 epoch(s), 2 seeds) as IT (loss on outputs) "
        "and W (instruction tokens weighted λ=0.5)."
    )
    run.data_stats = DataStats.model_validate({"stats": {"train": {"n": 7}}})  # what was actually prepared wins
    assert "fine-tuned on 7 examples" in describe(cfg, run)
