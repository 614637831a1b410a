# CloudWatch alarms for what AWS can see (hosts, RDS). Application alerts (sync lag, leader,
# gaps, dead letters) are Prometheus rules in monitoring/prometheus/alerts.yml.

resource "aws_sns_topic" "alarms" {
  name = "${local.name}-alarms"
}

resource "aws_sns_topic_subscription" "email" {
  count     = var.alarm_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

locals {
  gatherer_in_service = {
    for id, _ in local.gatherers : id => {
      id          = "m_${id}"
      metric_name = "GroupInServiceInstances"
      asg         = aws_autoscaling_group.gatherer[id].name
    }
  }
}

# Seed thresholds: fewer than 3 gatherers in service is a warning, none is critical.
resource "aws_cloudwatch_metric_alarm" "gatherers_degraded" {
  alarm_name          = "${local.name}-gatherers-below-3"
  alarm_description   = "Fewer than 3 gatherer instances in service (warning: redundancy reduced; runbook docs/operations.md#rb-gatherer-down)"
  comparison_operator = "LessThanThreshold"
  threshold           = 3
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "total"
    expression  = join(" + ", [for m in local.gatherer_in_service : m.id])
    label       = "Gatherers in service"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = local.gatherer_in_service
    content {
      id = metric_query.value.id
      metric {
        namespace   = "AWS/AutoScaling"
        metric_name = metric_query.value.metric_name
        period      = 60
        stat        = "Minimum"
        dimensions  = { AutoScalingGroupName = metric_query.value.asg }
      }
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "gatherers_none" {
  alarm_name          = "${local.name}-gatherers-none"
  alarm_description   = "No gatherer instance in service: data collection stopped (critical; runbook docs/operations.md#rb-all-gatherers-down)"
  comparison_operator = "LessThanOrEqualToThreshold"
  threshold           = 0
  evaluation_periods  = 1
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "total"
    expression  = join(" + ", [for m in local.gatherer_in_service : m.id])
    label       = "Gatherers in service"
    return_data = true
  }

  dynamic "metric_query" {
    for_each = local.gatherer_in_service
    content {
      id = metric_query.value.id
      metric {
        namespace   = "AWS/AutoScaling"
        metric_name = metric_query.value.metric_name
        period      = 60
        stat        = "Maximum"
        dimensions  = { AutoScalingGroupName = metric_query.value.asg }
      }
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "dedup_down" {
  for_each            = local.dedups
  alarm_name          = "${local.name}-dedup-${each.key}-not-in-service"
  alarm_description   = "Deduplicator ${each.key} has no instance in service (runbook docs/operations.md#rb-dedup-down)"
  namespace           = "AWS/AutoScaling"
  metric_name         = "GroupInServiceInstances"
  dimensions          = { AutoScalingGroupName = aws_autoscaling_group.dedup[each.key].name }
  statistic           = "Minimum"
  period              = 60
  evaluation_periods  = 5
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "rds_storage" {
  alarm_name          = "${local.name}-rds-free-storage-low"
  alarm_description   = "Production free storage below 10% of allocated (runbook docs/operations.md#rb-production)"
  namespace           = "AWS/RDS"
  metric_name         = "FreeStorageSpace"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.production.identifier }
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 2
  comparison_operator = "LessThanThreshold"
  threshold           = var.db_allocated_storage_gb * 1024 * 1024 * 1024 * 0.1
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "rds_cpu" {
  alarm_name          = "${local.name}-rds-cpu-high"
  alarm_description   = "Production CPU above 80% for 15 minutes (runbook docs/operations.md#rb-production)"
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.production.identifier }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = 80
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}

resource "aws_cloudwatch_metric_alarm" "rds_connections" {
  alarm_name          = "${local.name}-rds-connections-high"
  alarm_description   = "Production connection count high: risk of connection exhaustion (runbook docs/operations.md#rb-production)"
  namespace           = "AWS/RDS"
  metric_name         = "DatabaseConnections"
  dimensions          = { DBInstanceIdentifier = aws_db_instance.production.identifier }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  comparison_operator = "GreaterThanThreshold"
  threshold           = 400
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
}
