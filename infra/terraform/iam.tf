data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  artifact_arn = "${aws_s3_bucket.artifacts.arn}/${aws_s3_object.app_wheel.key}"
  log_group    = "/kalshi-data/${var.environment}"
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Shared by every host: CloudWatch metrics in the kalshi-data namespace and logs in its own group
# (for the CloudWatch agent, if installed), the release artefact when it comes from S3.
data "aws_iam_policy_document" "common" {
  statement {
    sid       = "MetricsInOwnNamespace"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["kalshi-data"]
    }
  }

  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = ["${aws_cloudwatch_log_group.main.arn}:*"]
  }

  statement {
    sid       = "ReleaseWheel"
    actions   = ["s3:GetObject"]
    resources = [local.artifact_arn]
  }
}

resource "aws_cloudwatch_log_group" "main" {
  name              = local.log_group
  retention_in_days = 30
}

# --- gatherers: one role each, so a gatherer reads only its own Kalshi key.

resource "aws_iam_role" "gatherer" {
  for_each           = local.gatherers
  name               = "${local.name}-gatherer-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "gatherer" {
  for_each = local.gatherers

  statement {
    sid       = "OwnKalshiKey"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.kalshi[each.key].arn]
  }

  statement {
    sid       = "OwnReaderPassword"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]
    resources = [aws_secretsmanager_secret.gatherer_reader[each.key].arn]
  }

  statement {
    sid       = "OwnRetentionPassword"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue"]
    resources = [aws_secretsmanager_secret.gatherer_retention[each.key].arn]
  }

  statement {
    sid       = "OwnDnsName"
    actions   = ["route53:ChangeResourceRecordSets"]
    resources = [aws_route53_zone.internal.arn]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsNormalizedRecordNames"
      values   = ["${each.key}.${aws_route53_zone.internal.name}"]
    }
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "route53:ChangeResourceRecordSetsRecordTypes"
      values   = ["A"]
    }
  }
}

resource "aws_iam_role_policy" "gatherer" {
  for_each = local.gatherers
  name     = "gatherer"
  role     = aws_iam_role.gatherer[each.key].id
  policy   = data.aws_iam_policy_document.gatherer[each.key].json
}

resource "aws_iam_role_policy" "gatherer_common" {
  for_each = local.gatherers
  name     = "common"
  role     = aws_iam_role.gatherer[each.key].id
  policy   = data.aws_iam_policy_document.common.json
}

resource "aws_iam_instance_profile" "gatherer" {
  for_each = local.gatherers
  name     = "${local.name}-gatherer-${each.key}"
  role     = aws_iam_role.gatherer[each.key].name
}

# --- deduplicator (leader and standby share a role; the export, retention and audit jobs run on
# the leader candidate, the jobs host).

resource "aws_iam_role" "dedup" {
  name               = "${local.name}-dedup"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

data "aws_iam_policy_document" "dedup" {
  statement {
    sid     = "ReadPasswords"
    actions = ["secretsmanager:GetSecretValue"]
    resources = concat(
      [for s in aws_secretsmanager_secret.gatherer_reader : s.arn],
      [for s in aws_secretsmanager_secret.gatherer_retention : s.arn],
      [
        aws_secretsmanager_secret.dedup_writer.arn,
        aws_secretsmanager_secret.exporter.arn,
        aws_secretsmanager_secret.auditor.arn,
      ],
    )
  }

  statement {
    sid       = "ArchiveList"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.archive.arn]
  }

  statement {
    sid       = "ArchiveObjects"
    actions   = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.archive.arn}/*"]
  }
}

resource "aws_iam_role_policy" "dedup" {
  name   = "dedup"
  role   = aws_iam_role.dedup.id
  policy = data.aws_iam_policy_document.dedup.json
}

resource "aws_iam_role_policy" "dedup_common" {
  name   = "common"
  role   = aws_iam_role.dedup.id
  policy = data.aws_iam_policy_document.common.json
}

resource "aws_iam_instance_profile" "dedup" {
  name = "${local.name}-dedup"
  role = aws_iam_role.dedup.name
}

resource "aws_iam_role_policy_attachment" "ssm" {
  for_each   = var.enable_ssm ? merge({ for k, r in aws_iam_role.gatherer : "gatherer-${k}" => r.name }, { dedup = aws_iam_role.dedup.name }) : {}
  role       = each.value
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}
