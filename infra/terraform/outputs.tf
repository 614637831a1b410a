output "vpc_id" {
  description = "ID of the kalshi-data VPC."
  value       = aws_vpc.main.id
}

output "private_subnet_ids" {
  description = "Private subnets, one per availability zone (gatherer i runs in subnet i)."
  value       = aws_subnet.private[*].id
}

output "gatherer_asg_names" {
  description = "Auto-scaling group of each gatherer (one instance each), by gatherer id."
  value       = { for id, asg in aws_autoscaling_group.gatherer : id => asg.name }
}

output "gatherer_dns_names" {
  description = "Private DNS name under which each gatherer's PostgreSQL is reachable from the deduplicator."
  value       = { for id, _ in local.gatherers : id => "${id}.${aws_route53_zone.internal.name}" }
}

output "dedup_asg_names" {
  description = "Auto-scaling groups of the deduplicator leader candidate (a, runs the export timer) and standby (b)."
  value       = { for k, asg in aws_autoscaling_group.dedup : k => asg.name }
}

output "rds_endpoint" {
  description = "Writer endpoint (host name) of the production RDS instance; follows Multi-AZ failovers."
  value       = aws_db_instance.production.address
}

output "rds_master_secret_arn" {
  description = "Secrets Manager secret (managed by RDS) holding the master user's credentials, for the one-time production bootstrap."
  value       = aws_db_instance.production.master_user_secret[0].secret_arn
}

output "archive_bucket" {
  description = "Name of the S3 bucket holding the Parquet archive."
  value       = aws_s3_bucket.archive.bucket
}

output "kalshi_key_secret_arns" {
  description = "Secrets the operator fills with each gatherer's Kalshi API key (JSON key_id, private_key)."
  value       = { for id, s in aws_secretsmanager_secret.kalshi : id => s.arn }
}

output "production_user_secret_arns" {
  description = "Secrets the operator fills with the kalshi_dedup, kalshi_export and kalshi_audit passwords (JSON password) during the production bootstrap."
  value = {
    dedup  = aws_secretsmanager_secret.dedup_writer.arn
    export = aws_secretsmanager_secret.exporter.arn
    audit  = aws_secretsmanager_secret.auditor.arn
  }
}

output "alarm_topic_arn" {
  description = "SNS topic receiving every CloudWatch alarm."
  value       = aws_sns_topic.alarms.arn
}
