"""The Glue tables (Terraform and CloudFormation) declare exactly the Parquet schema the exporter
writes: same tables, same column names in the same order, matching types, partitioned by date."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import yaml

from kalshi_data.tables import BY_NAME
from kalshi_data.tools.export import DEFAULT_TABLES, arrow_schema

REPO = Path(__file__).resolve().parents[2]
GLUE_TF = REPO / "infra" / "terraform" / "glue.tf"
CFN = REPO / "infra" / "cloudformation" / "kalshi-data.yaml"


def hive_type(t: pa.DataType) -> str:
    """The Hive/Glue type Athena and Trino read a Parquet column of this Arrow type as."""
    if pa.types.is_list(t):
        return f"array<{hive_type(t.value_type)}>"
    if pa.types.is_timestamp(t):
        assert t.unit == "us"
        assert t.tz == "UTC"
        return "timestamp"
    simple = {
        pa.string(): "string",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.bool_(): "boolean",
        pa.binary(): "binary",
    }
    return simple[t]


def expected() -> dict[str, list[tuple[str, str]]]:
    return {
        name: [(f.name, hive_type(f.type)) for f in arrow_schema(BY_NAME[name])]
        for name in DEFAULT_TABLES
    }


def terraform_tables() -> dict[str, list[tuple[str, str]]]:
    text = GLUE_TF.read_text()
    body = text[text.index("glue_tables = {") :]
    out: dict[str, list[tuple[str, str]]] = {}
    for m in re.finditer(r"(\w+) = \[(.*?)\n    \]", body, re.S):
        out[m.group(1)] = re.findall(r'\{ name = "(\w+)", type = "([\w<>]+)" \}', m.group(2))
    return out


def cfn_tables() -> dict[str, tuple[list[tuple[str, str]], list[str]]]:
    doc = yaml.safe_load(CFN.read_text())
    out = {}
    for res in doc["Resources"].values():
        if res["Type"] != "AWS::Glue::Table":
            continue
        ti = res["Properties"]["TableInput"]
        cols = [(c["Name"], c["Type"]) for c in ti["StorageDescriptor"]["Columns"]]
        out[ti["Name"]] = (cols, [k["Name"] for k in ti["PartitionKeys"]])
    return out


def test_terraform_glue_columns_match_the_parquet_schema() -> None:
    assert terraform_tables() == expected()
    text = GLUE_TF.read_text()
    assert 'name = "date"' in text
    assert "MapredParquetInputFormat" in text


def test_cloudformation_glue_columns_match_the_parquet_schema() -> None:
    tables = cfn_tables()
    assert {name: cols for name, (cols, _) in tables.items()} == expected()
    assert all(keys == ["date"] for _, keys in tables.values())


def test_no_float_columns_anywhere() -> None:
    """Prices and counts are integers in fixed units (decimal-exact), never floating point."""
    for cols in expected().values():
        assert not any(t in ("float", "double") for _, t in cols)
