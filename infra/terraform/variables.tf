variable "region" {
  description = "AWS region to deploy into. It must have at least three availability zones."
  type        = string
  default     = "us-east-1"
}

variable "environment" {
  description = "Short environment name (prod, staging); prefixes resource names and secret paths."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.environment))
    error_message = "environment must be 2-16 lowercase letters, digits or dashes."
  }
}

variable "tags" {
  description = "Extra tags applied to every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC; split into 3 public (NAT) and 3 private (instances, RDS) subnets."
  type        = string
  default     = "10.40.0.0/16"
}

variable "nat_gateway_per_az" {
  description = "One NAT gateway per AZ (true: an AZ failure cannot cut the other gatherers' egress) or a single shared one (cheaper)."
  type        = bool
  default     = true
}

variable "monitoring_cidrs" {
  description = "CIDR blocks of the Prometheus servers allowed to scrape ports 8080 (gatherer), 9090 (deduplicator) and 9100 (node-exporter). Empty: no scrape access."
  type        = list(string)
  default     = []
}

variable "ami_id" {
  description = "AMI for every instance (Debian 12 amd64). Empty: the newest official Debian 12 AMI (owner 136693071363)."
  type        = string
  default     = ""
}

variable "app_wheel_path" {
  description = "Local path of the kalshi-data wheel built from this repository (scripts/build-release.sh writes dist/kalshi_data-<version>-py3-none-any.whl). Terraform uploads it to the stack's artifact bucket and every host installs exactly that file, checked against its sha256."
  type        = string

  validation {
    condition     = endswith(var.app_wheel_path, ".whl")
    error_message = "app_wheel_path must name a .whl file (scripts/build-release.sh)."
  }
}

variable "ssm_agent_version" {
  description = "Version of the AWS SSM agent installed on every host (Session Manager access), a folder of AWS's regional amazon-ssm-<region> bucket: \"latest\" or a pinned version such as 3.3.1142.0."
  type        = string
  default     = "latest"
}

variable "ssm_agent_sha256" {
  description = "sha256 of that version's debian_amd64/amazon-ssm-agent.deb; when set the bootstrap refuses any other file. Pin it together with ssm_agent_version."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9a-f]{64})?$", var.ssm_agent_sha256))
    error_message = "ssm_agent_sha256 must be empty or 64 lowercase hex digits."
  }
}

variable "gatherer_ids" {
  description = "Gatherer identifiers, one gatherer per availability zone (exactly three)."
  type        = list(string)
  default     = ["g1", "g2", "g3"]

  validation {
    condition     = length(var.gatherer_ids) == 3
    error_message = "kalshi-data runs exactly three gatherers, one per AZ."
  }

  validation {
    condition     = alltrue([for g in var.gatherer_ids : can(regex("^[a-z][a-z0-9-]{0,15}$", g))])
    error_message = "gatherer ids are 1-16 lowercase letters, digits or dashes (they name DNS records, secrets and systemd units)."
  }
}

variable "gatherer_instance_type" {
  description = "EC2 instance type of the gatherers (PostgreSQL/TimescaleDB runs on the same host)."
  type        = string
  default     = "m6i.large"
}

variable "gatherer_volume_gb" {
  description = "Root EBS volume (gp3, encrypted) of each gatherer: holds the local database and the spool. Size for the retention window (7 days by default)."
  type        = number
  default     = 500
}

variable "dedup_instance_type" {
  description = "EC2 instance type of the deduplicator leader and standby."
  type        = string
  default     = "m6i.large"
}

variable "db_instance_class" {
  description = "RDS instance class of the production database."
  type        = string
  default     = "db.m6g.large"
}

variable "db_engine_version" {
  description = "RDS PostgreSQL engine version (major 15)."
  type        = string
  default     = "15"
}

variable "db_allocated_storage_gb" {
  description = "Initial production storage (gp3); storage autoscaling grows it up to db_max_allocated_storage_gb."
  type        = number
  default     = 500
}

variable "db_max_allocated_storage_gb" {
  description = "Upper bound of RDS storage autoscaling."
  type        = number
  default     = 4000
}

variable "db_name" {
  description = "Name of the production database."
  type        = string
  default     = "kalshi"
}

variable "db_backup_retention_days" {
  description = "Automated backup retention (point-in-time recovery window) in days."
  type        = number
  default     = 14
}

variable "archive_bucket_name" {
  description = "Name of the S3 archive bucket (globally unique). Empty: kalshi-data-<environment>-archive-<account id>."
  type        = string
  default     = ""
}

variable "archive_ia_after_days" {
  description = "Days after which archived Parquet objects move to STANDARD_IA."
  type        = number
  default     = 30
}

variable "archive_glacier_after_days" {
  description = "Days after which archived Parquet objects move to GLACIER_IR."
  type        = number
  default     = 180
}

variable "alarm_email" {
  description = "Optional e-mail address subscribed to the alarm SNS topic (confirm the subscription mail)."
  type        = string
  default     = ""
}

variable "enable_ssm" {
  description = "Attach AmazonSSMManagedInstanceCore so operators reach hosts with Session Manager (no SSH, no key pairs)."
  type        = bool
  default     = true
}

variable "kalshi_rest_url" {
  description = "Kalshi REST base URL the gatherers and the trade audit use (demo: https://external-api.demo.kalshi.co/trade-api/v2)."
  type        = string
  default     = "https://external-api.kalshi.com/trade-api/v2"
}

variable "kalshi_ws_url" {
  description = "Kalshi WebSocket v2 URL the gatherers use."
  type        = string
  default     = "wss://external-api-ws.kalshi.com/trade-api/ws/v2"
}
