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
  ami_id      = var.ami_id != "" ? var.ami_id : data.aws_ami.debian12[0].id
  repo        = "${path.module}/../.."
  scripts_dir = "${path.module}/../scripts"
  bootstrap   = "/opt/kalshi-data-bootstrap"

  common_files = {
    "${local.bootstrap}/bootstrap-common.sh" = { mode = "0755", content = file("${local.scripts_dir}/bootstrap-common.sh") }
  }

  gatherer_user_data = {
    for id, g in local.gatherers : id => templatefile("${path.module}/templates/user-data.yaml.tftpl", {
      script = "gatherer-bootstrap.sh"
      files = merge(local.common_files, {
        "${local.bootstrap}/gatherer-bootstrap.sh"         = { mode = "0755", content = file("${local.scripts_dir}/gatherer-bootstrap.sh") }
        "/etc/kalshi-data/systemd/kalshi-gatherer.service" = { mode = "0644", content = file("${local.repo}/systemd/kalshi-gatherer.service") }
        "/etc/kalshi-data/gatherer.yaml" = { mode = "0644", content = templatefile("${path.module}/templates/gatherer.yaml.tftpl", {
          gatherer_id     = id
          kalshi_rest_url = var.kalshi_rest_url
          kalshi_ws_url   = var.kalshi_ws_url
        }) }
        "/etc/kalshi-data/bootstrap.env" = { mode = "0600", content = join("\n", [
          "AWS_REGION=${var.region}",
          "APP_PACKAGE='${var.app_package}'",
          "APP_ARTIFACT_S3_URI='${var.app_artifact_s3_uri}'",
          "GATHERER_ID=${id}",
          "KALSHI_SECRET_ID=${aws_secretsmanager_secret.kalshi[id].arn}",
          "READER_SECRET_ID=${aws_secretsmanager_secret.gatherer_reader[id].arn}",
          "ZONE_ID=${aws_route53_zone.internal.zone_id}",
          "DNS_NAME=${id}.${aws_route53_zone.internal.name}",
          "VPC_CIDR=${var.vpc_cidr}",
          "",
        ]) }
      })
    })
  }

  dedup_user_data = {
    for name, d in local.dedups : name => templatefile("${path.module}/templates/user-data.yaml.tftpl", {
      script = "dedup-bootstrap.sh"
      files = merge(local.common_files, {
        "${local.bootstrap}/dedup-bootstrap.sh"          = { mode = "0755", content = file("${local.scripts_dir}/dedup-bootstrap.sh") }
        "/etc/kalshi-data/systemd/kalshi-dedup.service"  = { mode = "0644", content = file("${local.repo}/systemd/kalshi-dedup.service") }
        "/etc/kalshi-data/systemd/kalshi-export.service" = { mode = "0644", content = file("${local.repo}/systemd/kalshi-export.service") }
        "/etc/kalshi-data/systemd/kalshi-export.timer"   = { mode = "0644", content = file("${local.repo}/systemd/kalshi-export.timer") }
        "/etc/kalshi-data/dedup.yaml" = { mode = "0644", content = templatefile("${path.module}/templates/dedup.yaml.tftpl", {
          instance_id  = "dedup-${name}"
          gatherer_ids = var.gatherer_ids
        }) }
        "/etc/kalshi-data/export.yaml" = { mode = "0644", content = templatefile("${path.module}/templates/export.yaml.tftpl", {
          bucket = aws_s3_bucket.archive.bucket
          prefix = "kalshi-data"
          region = var.region
        }) }
        "/etc/kalshi-data/bootstrap.env" = { mode = "0600", content = join("\n", [
          "AWS_REGION=${var.region}",
          "APP_PACKAGE='${var.app_package}'",
          "APP_ARTIFACT_S3_URI='${var.app_artifact_s3_uri}'",
          "INSTANCE_ID=dedup-${name}",
          "RDS_ENDPOINT=${aws_db_instance.production.address}",
          "RDS_DB_NAME=${var.db_name}",
          "DEDUP_SECRET_ID=${aws_secretsmanager_secret.dedup_writer.arn}",
          "EXPORT_SECRET_ID=${aws_secretsmanager_secret.exporter.arn}",
          "GATHERER_IDS='${join(" ", var.gatherer_ids)}'",
          "GATHERER_DNS_SUFFIX=${aws_route53_zone.internal.name}",
          "READER_SECRET_PREFIX=kalshi-data/${var.environment}/gatherer-reader/",
          "ENABLE_EXPORT=${d.export}",
          "",
        ]) }
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
