"""harness.registry: the published numbers load, validate, query, and match the paper's text."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from harness.registry import DEFAULT_PATH, Registry, RegistryError, load_registry

# The lines of the paper's arXiv text that the registry cites (each cited line and the next), shipped
# with the tests: data/paper_lines.json.
PAPER_LINES = Path(__file__).parent / "data" / "paper_lines.json"
TABLE6 = ("6a", "6b", "6c", "6d", "6e", "6f", "6g", "6h", "6i")


@pytest.fixture(scope="module")
def reg() -> Registry:
    return load_registry()


@pytest.fixture(scope="module")
def raw_doc() -> dict:
    return yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))


def _write(tmp_path: Path, doc: dict) -> Path:
    path = tmp_path / "numbers.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _tiny_doc() -> dict:
    return {
        "schema_version": 1,
        "sources": {"arxiv": "arXiv text"},
        "tables": [
            {
                "id": "6a",
                "title": "Table 6a: tiny",
                "source": "arxiv",
                "defaults": {"dataset": "k400", "protocol": "closed", "profile": "official", "metric": "top1"},
                "columns": [{"id": "top1", "label": "Top-1"}, {"id": "gain", "label": "Δ", "derived": True}],
                "rows": [{"id": "mean_pool", "label": "Mean"}, {"id": "vcs", "label": "VCS", "settings": {"model.interaction": "vcs"}}],
            }
        ],
        "entries": [
            {"table": "6a", "row": "mean_pool", "column": "top1", "value": 76.8},
            {"table": "6a", "row": "vcs", "column": "top1", "value": 78.5},
            {"table": "6a", "row": "vcs", "column": "gain", "value": 1.7, "delta_of": ["vcs:top1", "mean_pool:top1"]},
        ],
    }


# --------------------------------------------------------------------------------------- the data
def test_table6_layout_is_complete_cell_by_cell(reg):
    """Every (row, column) of Tables 6a-6i has a number, except gains with no reference row."""
    absent = set()
    for t in TABLE6:
        spec = reg.table(t)
        for r in spec.row_ids:
            for c in spec.column_ids:
                if reg.entry(f"{t}/{r}/{c}") is None:
                    absent.add(f"{t}/{r}/{c}")
    assert absent == {"6a/mean_pool/gain", "6h/videoprompt/gain", "6h/actionclip/gain"}


def test_table6i_values_as_printed(reg):
    printed = {  # Table 6i: Baseline -> V -> V+A, V* -> V*+A
        "vit_b32": (76.8, 78.9, 81.4, 80.2, 81.9),
        "vit_b16": (79.9, 82.1, 83.2, 83.2, 83.9),
        "vit_l14": (85.2, 86.4, 86.5, 87.4, 87.4),
    }
    for row, values in printed.items():
        got = tuple(reg.value("6i", row, c) for c in ("baseline", "V", "V+A", "V*", "V*+A"))
        assert got == values
    assert reg.get(table="6i", row="vit_b16", column="V").backbone == "ViT-B/16"
    assert reg.get(table="6i", row="vit_l14", column="V*").views == "4x3"
    assert reg.get(table="6i", row="vit_l14", column="V").views == "1x1"


def test_only_the_papers_own_slip_is_inconsistent(reg):
    """Printed gains agree with their operands, re-reported cells agree, except 6i ViT-L/14 '+0.8%'."""
    assert reg.inconsistencies() == ["6i/vit_l14/gain_V: printed gain +0.8 but 86.4 - 85.2 = +1.2"]


def test_every_arxiv_number_is_on_its_cited_line(reg):
    lines = {int(k): v for k, v in json.loads(PAPER_LINES.read_text(encoding="utf-8"))["lines"].items()}
    checked = 0
    for e in reg:
        if e.line is None or not e.source.startswith("arXiv"):
            continue
        assert e.line in lines, f"{e.key}: line {e.line} of the paper is not in {PAPER_LINES.name}"
        window = " ".join(lines[n] for n in (e.line, e.line + 1) if n in lines)
        printed = f"{e.value:.{e.decimals}f}"
        assert (f"+{printed}" if e.is_gain else printed) in window, (e.key, printed, lines[e.line])
        if e.std is not None:
            assert f"±{e.std:.{e.std_decimals}f}" in window, e.key
        checked += 1
    assert checked > 150


def test_bike_numbers_are_official_and_others_external(reg):
    for e in reg:
        assert e.profile == ("official" if e.method == "BIKE" else "external"), e.key
    assert {e.method for e in reg.find(table="6h")} == {"VideoPrompt", "ActionCLIP", "BIKE"}


def test_keys_of_a_table6_cell(reg):
    e = reg.get(table="6a", row="vcs_transf_frozen", column="top1")
    assert (e.dataset, e.backbone, e.frames, e.resolution, e.views, e.protocol, e.metric) == (
        "k400", "ViT-B/32", 8, 224, "1x1", "closed", "top1"
    )
    assert "Table 6a" in e.source and "line 643" in e.source


def test_zero_shot_and_few_shot_protocols(reg):
    half = reg.find(method="BIKE", protocol="zero_shot_half", table="5")
    assert sorted((e.dataset, e.value, e.std) for e in half) == [
        ("anet", 86.2, 1.0), ("hmdb51", 61.4, 3.6), ("ucf101", 86.6, 3.4)
    ]
    assert reg.get(table="5", row="bike_vitl14", column="k600").protocol == "zero_shot_k600"
    assert [e.value for e in reg.find(table="4", protocol="few_shot_2", method="BIKE")] == [73.5, 96.1, 88.7, 75.7]


def test_readme_and_logs_keep_views_apart(reg):
    """README K400 numbers are 4x3 views, the released logs 1x1 (a frequent confusion)."""
    assert reg.get(table="readme_k400", row="vitl14_8x224", column="top1").views == "4x3"
    assert reg.get(table="logs_k400", row="vitl14_8x224", column="V").views == "1x1"
    assert reg.get(table="logs_k400", row="vitb32_8x224", column="V+A_top5").metric == "top5"
    assert reg.value("readme_zero_shot", "k600", "mean") == 68.53


def test_printed_precision_is_kept(reg):
    assert reg.get(table="readme_zero_shot", row="ucf101", column="top1_half").formatted() == "86.63 ± 3.4"
    assert reg.get(table="readme_zero_shot", row="hmdb51", column="top1_half").formatted() == "61.37 ± 3.68"
    assert reg.get(table="5", row="bike_vitl14", column="anet_half").formatted() == "86.2 ± 1.0"
    assert reg.get(table="6e", row="untrained", column="V+A").formatted() == "80.0"
    assert reg.get(table="1", row="bike_vitl14_16x224", column="gflops").formatted() == "830"


# ------------------------------------------------------------------------------------- the queries
def test_find_by_any_key_subset_in_paper_order(reg):
    assert [e.row for e in reg.find(table="6a", column="top1")] == ["mean_pool", "vcs", "vcs_transf", "vcs_transf_frozen"]
    assert len(reg.find(table="6a")) == 7
    assert all(e.backbone == "ViT-L/14" for e in reg.find(table="6i", row="vit_l14"))
    with pytest.raises(TypeError, match="unknown registry key"):
        reg.find(tabel="6a")


def test_get_missing_names_near_matches(reg):
    with pytest.raises(KeyError) as info:
        reg.get(table="6a", row="vcs_tranf", column="top1")
    msg = str(info.value)
    assert "6a/vcs_transf/top1" in msg and "mean_pool" in msg
    with pytest.raises(KeyError, match="near matches: 6i"):
        reg.get(table="6j", row="vit_b32", column="V")


def test_get_ambiguous_lists_candidates(reg):
    with pytest.raises(LookupError, match="add keys"):
        reg.get(table="6a", column="top1")


def test_tables_and_layout_order(reg):
    assert reg.tables()[:5] == ["1", "2", "3", "4", "5"]
    assert reg.tables()[5:14] == list(TABLE6)
    spec = reg.table("6i")
    assert spec.row_ids == ["vit_b32", "vit_b16", "vit_l14"]
    assert [c.id for c in spec.columns if not c.derived] == ["baseline", "V", "V+A", "V*", "V*+A"]
    assert spec.row("vit_b32").label == "ViT-B/32"
    counts = reg.counts()
    assert sum(counts.values()) == len(reg) and counts["6i"] == 24


def test_cell_settings_merge_row_and_column(reg):
    s = reg.cell_settings("6i", "vit_b16", "V*+A")
    assert s == {"model.backbone": "ViT-B-16", "attributes.train": True, "eval.clips": 4, "eval.crops": 3}


# ------------------------------------------------------------------------------------- validation
def test_tiny_file_loads(tmp_path):
    reg = Registry.load(_write(tmp_path, _tiny_doc()))
    assert reg.value("6a", "vcs", "gain") == 1.7 and reg.inconsistencies() == []


def test_bad_value_names_file_entry_and_field(tmp_path):
    doc = _tiny_doc()
    doc["entries"][1]["value"] = "seventy"
    path = _write(tmp_path, doc)
    with pytest.raises(RegistryError) as info:
        Registry.load(path)
    msg = str(info.value)
    assert str(path) in msg and "entries[1]" in msg and "'value'" in msg and "seventy" in msg


def test_unknown_row_and_table_are_reported_with_near_matches(tmp_path):
    doc = _tiny_doc()
    doc["entries"][0]["row"] = "mean_pol"
    doc["entries"].append({"table": "6x", "row": "a", "column": "top1", "value": 1.0})
    with pytest.raises(RegistryError) as info:
        Registry.load(_write(tmp_path, doc))
    msg = str(info.value)
    assert "entries[0]" in msg and "near matches: mean_pool" in msg
    assert "entries[3]" in msg and "no table '6x'" in msg


def test_duplicate_cells_bad_refs_and_settings_are_errors(tmp_path):
    doc = _tiny_doc()
    doc["entries"].append(copy.deepcopy(doc["entries"][0]))
    doc["entries"][2]["delta_of"] = ["vcs:top1", "nope:top1"]
    doc["tables"][0]["rows"][1]["settings"] = {"model.interactoin": "vcs"}
    with pytest.raises(RegistryError) as info:
        Registry.load(_write(tmp_path, doc))
    msg = str(info.value)
    assert "duplicate cell '6a/mean_pool/top1'" in msg
    assert "'nope:top1' is not a cell" in msg
    assert "'model.interactoin' is not a RunConfig field" in msg


def test_missing_required_key_and_bad_protocol(tmp_path):
    doc = _tiny_doc()
    del doc["tables"][0]["defaults"]["dataset"]
    doc["entries"][0]["protocol"] = "zeroshot"
    with pytest.raises(RegistryError) as info:
        Registry.load(_write(tmp_path, doc))
    msg = str(info.value)
    assert "field 'dataset': required" in msg
    assert "entries[0]" in msg and "'protocol'" in msg


def test_gain_outside_a_derived_column_is_an_error(tmp_path):
    doc = _tiny_doc()
    doc["entries"][1]["delta_of"] = ["vcs:top1", "mean_pool:top1"]
    with pytest.raises(RegistryError, match="only allowed in a derived column"):
        Registry.load(_write(tmp_path, doc))


def test_file_level_errors(tmp_path):
    with pytest.raises(RegistryError, match="file not found"):
        Registry.load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables: [\n", encoding="utf-8")
    with pytest.raises(RegistryError, match="not valid YAML"):
        Registry.load(bad)
    doc = _tiny_doc()
    doc["tables"][0]["colums"] = []
    with pytest.raises(RegistryError, match=r"tables\[0\] \(table '6a'\).*unknown field"):
        Registry.load(_write(tmp_path, doc))
