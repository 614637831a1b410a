# Least-privilege network paths:
#   deduplicator -> gatherer PostgreSQL 5432 and /health 8080 (kalshi-data status), deduplicator
#   -> RDS 5432, nothing else inbound
#   (except scraping from monitoring_cidrs); every host egresses on 443 (Kalshi, AWS APIs, apt,
#   PyPI) and DNS. The deduplicator host needs its 443 for the trade audit too (kalshi-audit.timer
#   pages the exchange's GET /markets/trades, docs/audit.md). The Amazon-provided resolver and time service (VPC+2, 169.254.169.123) are not
#   filtered by security groups; the DNS rules cover custom resolvers inside the VPC.

resource "aws_security_group" "gatherer" {
  name        = "${local.name}-gatherer"
  description = "kalshi-data gatherers: PostgreSQL from the deduplicator only; egress 443 and DNS"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${local.name}-gatherer" }
}

resource "aws_security_group" "dedup" {
  name        = "${local.name}-dedup"
  description = "kalshi-data deduplicator: egress to gatherers and RDS on 5432, 443 and DNS"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${local.name}-dedup" }
}

resource "aws_security_group" "rds" {
  name        = "${local.name}-rds"
  description = "kalshi-data production RDS: PostgreSQL from the deduplicator only"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${local.name}-rds" }
}

resource "aws_vpc_security_group_ingress_rule" "gatherer_pg_from_dedup" {
  security_group_id            = aws_security_group.gatherer.id
  description                  = "PostgreSQL from the deduplicator"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.dedup.id
}

resource "aws_vpc_security_group_ingress_rule" "rds_pg_from_dedup" {
  security_group_id            = aws_security_group.rds.id
  description                  = "PostgreSQL from the deduplicator (and the export job on its host)"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.dedup.id
}

resource "aws_vpc_security_group_egress_rule" "dedup_pg_to_gatherers" {
  security_group_id            = aws_security_group.dedup.id
  description                  = "PostgreSQL to the gatherers"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.gatherer.id
}

# `kalshi-data status` on the deduplicator host reads each gatherer's /health (audit.yaml).
resource "aws_vpc_security_group_ingress_rule" "gatherer_health_from_dedup" {
  security_group_id            = aws_security_group.gatherer.id
  description                  = "Gatherer /health from the deduplicator (kalshi-data status)"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.dedup.id
}

resource "aws_vpc_security_group_egress_rule" "dedup_health_to_gatherers" {
  security_group_id            = aws_security_group.dedup.id
  description                  = "Gatherer /health (kalshi-data status)"
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
  referenced_security_group_id = aws_security_group.gatherer.id
}

resource "aws_vpc_security_group_egress_rule" "dedup_pg_to_rds" {
  security_group_id            = aws_security_group.dedup.id
  description                  = "PostgreSQL to production RDS"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_security_group.rds.id
}

locals {
  host_sgs = {
    gatherer = aws_security_group.gatherer.id
    dedup    = aws_security_group.dedup.id
  }
  scrape_ports = {
    gatherer = [8080, 9100]
    dedup    = [9090, 9100]
  }
  scrape_rules = merge([
    for role, ports in local.scrape_ports : {
      for pair in setproduct(ports, var.monitoring_cidrs) :
      "${role}-${pair[0]}-${pair[1]}" => { role = role, port = pair[0], cidr = pair[1] }
    }
  ]...)
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each          = local.host_sgs
  security_group_id = each.value
  description       = "HTTPS: Kalshi API (capture; trade audit on the dedup host), AWS APIs, apt, PyPI"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "dns_udp" {
  for_each          = local.host_sgs
  security_group_id = each.value
  description       = "DNS inside the VPC"
  ip_protocol       = "udp"
  from_port         = 53
  to_port           = 53
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_egress_rule" "dns_tcp" {
  for_each          = local.host_sgs
  security_group_id = each.value
  description       = "DNS inside the VPC (TCP fallback)"
  ip_protocol       = "tcp"
  from_port         = 53
  to_port           = 53
  cidr_ipv4         = var.vpc_cidr
}

resource "aws_vpc_security_group_ingress_rule" "scrape" {
  for_each          = local.scrape_rules
  security_group_id = local.host_sgs[each.value.role]
  description       = "Prometheus scrape"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
}
