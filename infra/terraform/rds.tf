# Production: RDS PostgreSQL 15, Multi-AZ (synchronous standby, automatic failover in ~60-120 s),
# TLS enforced by the parameter group, master password managed by RDS in Secrets Manager.

resource "aws_db_subnet_group" "production" {
  name       = "${local.name}-production"
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_db_parameter_group" "production" {
  name   = "${local.name}-pg15"
  family = "postgres15"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  # Dead clients (a partitioned deduplicator) release their sessions and locks promptly.
  parameter {
    name  = "tcp_keepalives_idle"
    value = "30"
  }

  parameter {
    name  = "tcp_keepalives_interval"
    value = "10"
  }

  parameter {
    name  = "idle_in_transaction_session_timeout"
    value = "600000"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "5000"
  }
}

resource "aws_db_instance" "production" {
  identifier                  = "${local.name}-production"
  engine                      = "postgres"
  engine_version              = var.db_engine_version
  instance_class              = var.db_instance_class
  db_name                     = var.db_name
  username                    = "kalshi_admin"
  manage_master_user_password = true

  multi_az               = true
  db_subnet_group_name   = aws_db_subnet_group.production.name
  vpc_security_group_ids = [aws_security_group.rds.id]
  parameter_group_name   = aws_db_parameter_group.production.name
  ca_cert_identifier     = "rds-ca-rsa2048-g1"
  publicly_accessible    = false

  allocated_storage     = var.db_allocated_storage_gb
  max_allocated_storage = var.db_max_allocated_storage_gb
  storage_type          = "gp3"
  storage_encrypted     = true

  backup_retention_period    = var.db_backup_retention_days
  backup_window              = "03:00-04:00"
  maintenance_window         = "sun:04:30-sun:05:30"
  auto_minor_version_upgrade = true
  copy_tags_to_snapshot      = true
  deletion_protection        = true
  skip_final_snapshot        = false
  final_snapshot_identifier  = "${local.name}-production-final"

  performance_insights_enabled    = true
  monitoring_interval             = 0
  enabled_cloudwatch_logs_exports = ["postgresql"]
}
