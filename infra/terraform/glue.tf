# The S3 archive as a data lake: an AWS Glue Data Catalog database with one table per archived
# table, for Athena, Trino (Glue metastore) or Spark. Each table reads the export's Parquet files in
# place, Hive-partitioned by day (s3://<archive>/kalshi-data/<table>/date=YYYY-MM-DD/). Athena finds
# the partitions by projection (no crawler, no MSCK REPAIR); Trino and Spark register them with
# `MSCK REPAIR TABLE` or `CALL system.sync_partition_metadata` (docs/archive.md).
# Column names, order and types are those the exporter writes (kalshi_data/tools/export.py arrow_schema,
# from kalshi_data/tables.py); tests/unit/test_glue_schema.py keeps the three in step.

locals {
  archive_prefix = "kalshi-data"
  glue_tables = {
    trades = [
      { name = "trade_id", type = "string" },
      { name = "ticker", type = "string" },
      { name = "exchange_ts", type = "timestamp" },
      { name = "yes_price", type = "int" },
      { name = "no_price", type = "int" },
      { name = "count", type = "bigint" },
      { name = "taker_outcome_side", type = "string" },
      { name = "taker_book_side", type = "string" },
      { name = "taker_side", type = "string" },
      { name = "is_block_trade", type = "boolean" },
      { name = "sid", type = "int" },
      { name = "seq", type = "bigint" },
      { name = "suspect", type = "boolean" },
      { name = "received_at", type = "timestamp" },
      { name = "gatherer_id", type = "string" },
    ]
    orderbook_deltas = [
      { name = "ticker", type = "string" },
      { name = "market_id", type = "string" },
      { name = "exchange_ts", type = "timestamp" },
      { name = "side", type = "string" },
      { name = "price", type = "int" },
      { name = "delta", type = "bigint" },
      { name = "k", type = "int" },
      { name = "sid", type = "int" },
      { name = "seq", type = "bigint" },
      { name = "suspect", type = "boolean" },
      { name = "received_at", type = "timestamp" },
      { name = "gatherer_id", type = "string" },
    ]
    orderbook_snapshots = [
      { name = "ticker", type = "string" },
      { name = "market_id", type = "string" },
      { name = "exchange_ts", type = "timestamp" },
      { name = "source", type = "string" },
      { name = "yes_prices", type = "array<int>" },
      { name = "yes_counts", type = "array<bigint>" },
      { name = "no_prices", type = "array<int>" },
      { name = "no_counts", type = "array<bigint>" },
      { name = "content_hash", type = "bigint" },
      { name = "sid", type = "int" },
      { name = "seq", type = "bigint" },
      { name = "suspect", type = "boolean" },
      { name = "received_at", type = "timestamp" },
      { name = "gatherer_id", type = "string" },
    ]
    tickers = [
      { name = "ticker", type = "string" },
      { name = "market_id", type = "string" },
      { name = "exchange_ts", type = "timestamp" },
      { name = "price", type = "int" },
      { name = "yes_bid", type = "int" },
      { name = "yes_ask", type = "int" },
      { name = "volume", type = "bigint" },
      { name = "open_interest", type = "bigint" },
      { name = "dollar_volume", type = "bigint" },
      { name = "dollar_open_interest", type = "bigint" },
      { name = "yes_bid_size", type = "bigint" },
      { name = "yes_ask_size", type = "bigint" },
      { name = "last_trade_size", type = "bigint" },
      { name = "content_hash", type = "bigint" },
      { name = "received_at", type = "timestamp" },
      { name = "gatherer_id", type = "string" },
    ]
    lifecycle_events = [
      { name = "kind", type = "string" },
      { name = "ticker", type = "string" },
      { name = "event_type", type = "string" },
      { name = "payload", type = "string" },
      { name = "content_hash", type = "bigint" },
      { name = "sid", type = "int" },
      { name = "seq", type = "bigint" },
      { name = "suspect", type = "boolean" },
      { name = "received_at", type = "timestamp" },
      { name = "gatherer_id", type = "string" },
    ]
  }
}

resource "aws_glue_catalog_database" "archive" {
  name        = replace(local.name, "-", "_")
  description = "kalshi-data S3 archive (Parquet, one table per archived table, partitioned by date)."
}

resource "aws_glue_catalog_table" "archive" {
  for_each      = local.glue_tables
  name          = each.key
  database_name = aws_glue_catalog_database.archive.name
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    classification                  = "parquet"
    EXTERNAL                        = "TRUE"
    "parquet.compression"           = "ZSTD"
    "projection.enabled"            = "true"
    "projection.date.type"          = "date"
    "projection.date.format"        = "yyyy-MM-dd"
    "projection.date.range"         = "2024-01-01,NOW"
    "projection.date.interval"      = "1"
    "projection.date.interval.unit" = "DAYS"
    "storage.location.template"     = "s3://${aws_s3_bucket.archive.bucket}/${local.archive_prefix}/${each.key}/date=$${date}/"
  }

  partition_keys {
    name = "date"
    type = "string"
  }

  storage_descriptor {
    location      = "s3://${aws_s3_bucket.archive.bucket}/${local.archive_prefix}/${each.key}/"
    input_format  = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    }

    dynamic "columns" {
      for_each = each.value
      content {
        name = columns.value.name
        type = columns.value.type
      }
    }
  }
}
