data "aws_ami" "debian12" {
  count       = var.ami_id == "" ? 1 : 0
  most_recent = true
  owners      = ["136693071363"] # Debian cloud team

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  ami_id = var.ami_id != "" ? var.ami_id : data.aws_ami.debian12[0].id
  # Everything a host needs ships inside this module (files/, synced from systemd/ and
  # infra/scripts/ by scripts/sync-terraform-files.sh): no path outside the module is read.
  files     = "${path.module}/files"
  bootstrap = "/opt/kalshi-data-bootstrap"
  units     = "/etc/kalshi-data/systemd"

  # The release: exactly the wheel this repository builds, uploaded to the stack's artifact
  # bucket and pinned by its sha256 (s3.tf).
  app_env = [
    "AWS_REGION=${var.region}",
    "APP_WHEEL_S3_URI=s3://${aws_s3_bucket.artifacts.bucket}/${aws_s3_object.app_wheel.key}",
    "APP_WHEEL_SHA256=${local.app_wheel_sha256}",
    "SSM_AGENT_VERSION=${var.ssm_agent_version}",
    "SSM_AGENT_SHA256=${var.ssm_agent_sha256}",
  ]

  common_files = {
    "${local.bootstrap}/bootstrap-common.sh"        = { mode = "0755", content = file("${local.files}/scripts/bootstrap-common.sh") }
    "/etc/systemd/system/kalshi-bootstrap@.service" = { mode = "0644", content = file("${local.files}/systemd/kalshi-bootstrap@.service") }
  }

  gatherer_user_data = {
    for id, g in local.gatherers : id => templatefile("${path.module}/templates/user-data.yaml.tftpl", {
      role = "gatherer"
      files = merge(local.common_files, {
        "${local.bootstrap}/gatherer-bootstrap.sh"                      = { mode = "0755", content = file("${local.files}/scripts/gatherer-bootstrap.sh") }
        "${local.units}/kalshi-gatherer.service"                        = { mode = "0644", content = file("${local.files}/systemd/kalshi-gatherer.service") }
        "/etc/systemd/system/postgresql@.service.d/kalshi-restart.conf" = { mode = "0644", content = file("${local.files}/systemd/postgresql@.service.d-kalshi-restart.conf") }
        "/etc/kalshi-data/gatherer.yaml" = { mode = "0644", content = templatefile("${path.module}/templates/gatherer.yaml.tftpl", {
          gatherer_id     = id
          kalshi_rest_url = var.kalshi_rest_url
          kalshi_ws_url   = var.kalshi_ws_url
        }) }
        "/etc/kalshi-data/bootstrap.env" = { mode = "0600", content = join("\n", concat(local.app_env, [
          "GATHERER_ID=${id}",
          "KALSHI_SECRET_ID=${aws_secretsmanager_secret.kalshi[id].arn}",
          "READER_SECRET_ID=${aws_secretsmanager_secret.gatherer_reader[id].arn}",
          "RETENTION_SECRET_ID=${aws_secretsmanager_secret.gatherer_retention[id].arn}",
          "ZONE_ID=${aws_route53_zone.internal.zone_id}",
          "DNS_NAME=${id}.${aws_route53_zone.internal.name}",
          "VPC_CIDR=${var.vpc_cidr}",
          "",
        ])) }
      })
    })
  }

  dedup_user_data = {
    for name, d in local.dedups : name => templatefile("${path.module}/templates/user-data.yaml.tftpl", {
      role = "dedup"
      files = merge(local.common_files, {
        "${local.bootstrap}/dedup-bootstrap.sh"    = { mode = "0755", content = file("${local.files}/scripts/dedup-bootstrap.sh") }
        "${local.units}/kalshi-dedup.service"      = { mode = "0644", content = file("${local.files}/systemd/kalshi-dedup.service") }
        "${local.units}/kalshi-export.service"     = { mode = "0644", content = file("${local.files}/systemd/kalshi-export.service") }
        "${local.units}/kalshi-export.timer"       = { mode = "0644", content = file("${local.files}/systemd/kalshi-export.timer") }
        "${local.units}/kalshi-audit.service"      = { mode = "0644", content = file("${local.files}/systemd/kalshi-audit.service") }
        "${local.units}/kalshi-audit.timer"        = { mode = "0644", content = file("${local.files}/systemd/kalshi-audit.timer") }
        "${local.units}/kalshi-retention@.service" = { mode = "0644", content = file("${local.files}/systemd/kalshi-retention@.service") }
        "${local.units}/kalshi-retention@.timer"   = { mode = "0644", content = file("${local.files}/systemd/kalshi-retention@.timer") }
        "/etc/kalshi-data/dedup.yaml" = { mode = "0644", content = templatefile("${path.module}/templates/dedup.yaml.tftpl", {
          instance_id  = "dedup-${name}"
          gatherer_ids = var.gatherer_ids
        }) }
        "/etc/kalshi-data/export.yaml" = { mode = "0644", content = templatefile("${path.module}/templates/export.yaml.tftpl", {
          bucket = aws_s3_bucket.archive.bucket
          prefix = "kalshi-data"
          region = var.region
        }) }
        "/etc/kalshi-data/audit.yaml" = { mode = "0644", content = templatefile("${path.module}/templates/audit.yaml.tftpl", {
          instance_id     = "dedup-${name}"
          gatherer_ids    = var.gatherer_ids
          dns_suffix      = aws_route53_zone.internal.name
          kalshi_rest_url = var.kalshi_rest_url
        }) }
        "/etc/kalshi-data/bootstrap.env" = { mode = "0600", content = join("\n", concat(local.app_env, [
          "INSTANCE_ID=dedup-${name}",
          "RDS_ENDPOINT=${aws_db_instance.production.address}",
          "RDS_DB_NAME=${var.db_name}",
          "DEDUP_SECRET_ID=${aws_secretsmanager_secret.dedup_writer.arn}",
          "EXPORT_SECRET_ID=${aws_secretsmanager_secret.exporter.arn}",
          "AUDIT_SECRET_ID=${aws_secretsmanager_secret.auditor.arn}",
          "GATHERER_IDS='${join(" ", var.gatherer_ids)}'",
          "GATHERER_DNS_SUFFIX=${aws_route53_zone.internal.name}",
          "READER_SECRET_PREFIX=kalshi-data/${var.environment}/gatherer-reader/",
          "RETENTION_SECRET_PREFIX=kalshi-data/${var.environment}/gatherer-retention/",
          "ENABLE_EXPORT=${d.export}",
          "",
        ])) }
      })
    })
  }
}

# --- gatherers: one single-instance auto-scaling group per AZ. The health check is EC2 status
# (the seed's HealthCheckGracePeriod 300): an application health check would replace every
# gatherer during a Kalshi outage and throw away their unsynced rows. systemd restarts the process.

resource "aws_launch_template" "gatherer" {
  for_each      = local.gatherers
  name          = "${local.name}-gatherer-${each.key}"
  image_id      = local.ami_id
  instance_type = var.gatherer_instance_type
  user_data     = base64gzip(local.gatherer_user_data[each.key])

  iam_instance_profile {
    arn = aws_iam_instance_profile.gatherer[each.key].arn
  }

  vpc_security_group_ids = [aws_security_group.gatherer.id]

  metadata_options {
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.gatherer_volume_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags = {
      Name               = "${local.name}-gatherer-${each.key}"
      "kalshi-data-role" = "gatherer"
      "kalshi-data-id"   = each.key
    }
  }
}

resource "aws_autoscaling_group" "gatherer" {
  for_each                  = local.gatherers
  name                      = "${local.name}-gatherer-${each.key}"
  min_size                  = 1
  max_size                  = 1
  desired_capacity          = 1
  vpc_zone_identifier       = [aws_subnet.private[each.value.az_index].id]
  health_check_type         = "EC2"
  health_check_grace_period = 300
  enabled_metrics           = ["GroupInServiceInstances", "GroupDesiredCapacity"]

  launch_template {
    id      = aws_launch_template.gatherer[each.key].id
    version = aws_launch_template.gatherer[each.key].latest_version
  }

  tag {
    key                 = "kalshi-data-role"
    value               = "gatherer"
    propagate_at_launch = true
  }
}

# --- deduplicator leader candidate (a) and standby (b), each a single-instance ASG in its own AZ.

resource "aws_launch_template" "dedup" {
  for_each      = local.dedups
  name          = "${local.name}-dedup-${each.key}"
  image_id      = local.ami_id
  instance_type = var.dedup_instance_type
  user_data     = base64gzip(local.dedup_user_data[each.key])

  iam_instance_profile {
    arn = aws_iam_instance_profile.dedup.arn
  }

  vpc_security_group_ids = [aws_security_group.dedup.id]

  metadata_options {
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    http_endpoint               = "enabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = 50
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags = {
      Name               = "${local.name}-dedup-${each.key}"
      "kalshi-data-role" = "dedup"
      "kalshi-data-id"   = "dedup-${each.key}"
    }
  }
}

resource "aws_autoscaling_group" "dedup" {
  for_each                  = local.dedups
  name                      = "${local.name}-dedup-${each.key}"
  min_size                  = 1
  max_size                  = 1
  desired_capacity          = 1
  vpc_zone_identifier       = [aws_subnet.private[each.value.az_index].id]
  health_check_type         = "EC2"
  health_check_grace_period = 300
  enabled_metrics           = ["GroupInServiceInstances"]

  launch_template {
    id      = aws_launch_template.dedup[each.key].id
    version = aws_launch_template.dedup[each.key].latest_version
  }

  tag {
    key                 = "kalshi-data-role"
    value               = "dedup"
    propagate_at_launch = true
  }
}
