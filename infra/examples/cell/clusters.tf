# What the cell needs before its first prepare, next to the module: green (an Aurora
# PostgreSQL cluster of the target major) and the logical-replication settings both sides
# need. Blue is the cell's existing cluster, managed wherever it already is: attach
# aws_rds_cluster_parameter_group.blue to it there, then reboot its writer (below).

locals {
  # Sizing, per cell. Each database gets one subscription per table group plus one for the
  # rest (start-replication), each with its own slot on blue; during the initial copy each
  # subscription also runs up to max_sync_workers_per_subscription table-sync workers, each
  # with a temporary slot on blue. The margins leave room for a rerun and for psql.
  databases                = 1 # cells/local.json: databases
  table_groups             = 1 # cells/local.json: table_groups
  downstream_subscriptions = 1 # cells/local.json: downstream[].subscriptions, all of them
  sync_workers             = 2 # max_sync_workers_per_subscription (PostgreSQL's default)

  subscriptions = local.databases * (local.table_groups + 1)
  # Blue: every subscription's slot, every table-sync worker's temporary slot, the
  # downstream's slots, and the marker's spare.
  blue_slots = local.subscriptions * (1 + local.sync_workers) + local.downstream_subscriptions + 5
  # Green: an apply worker per subscription and the sync workers while copying ("databases
  # + 5" at least, as seed 003 learnt from AWS Support); after the switch, the old blue's
  # slot switchyard_reverse per database and the downstream's slots.
  green_workers = max(local.subscriptions * (1 + local.sync_workers) + 5, local.databases + 5)
  green_slots   = local.subscriptions + local.databases + local.downstream_subscriptions + 5
}

# Blue: logical replication on. rds.logical_replication is static: it applies only after
# the writer reboots, which drops its connections (PgBouncer reconnects) — schedule it, and
# run prepare's preflight after it (it refuses a blue without wal_level = logical).
resource "aws_rds_cluster_parameter_group" "blue" {
  name        = "cell-a-blue-pg14-logical"
  family      = "aurora-postgresql14"
  description = "cell-a blue: logical replication for switchyard"

  parameter {
    name         = "rds.logical_replication"
    value        = "1"
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_replication_slots"
    value        = tostring(local.blue_slots)
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_wal_senders"
    value        = tostring(local.blue_slots)
    apply_method = "pending-reboot"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
}

# Green: the target major, logical replication on from the start (it subscribes to blue,
# and after the switch publishes to the old blue), workers and slots sized above.
resource "aws_rds_cluster_parameter_group" "green" {
  name        = "cell-a-green-pg17-logical"
  family      = "aurora-postgresql17"
  description = "cell-a green: logical replication for switchyard"

  parameter {
    name         = "rds.logical_replication"
    value        = "1"
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_logical_replication_workers"
    value        = tostring(local.green_workers)
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_worker_processes"
    value        = tostring(local.green_workers + 8)
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_replication_slots"
    value        = tostring(local.green_slots)
    apply_method = "pending-reboot"
  }
  parameter {
    name         = "max_wal_senders"
    value        = tostring(local.green_slots)
    apply_method = "pending-reboot"
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
}

resource "aws_rds_cluster" "green" {
  #checkov:skip=CKV2_AWS_8:Green's backups are its automated ones until it serves; AWS Backup plans are the cell's own, added with blue's after the switch.
  cluster_identifier              = "cell-a-green"
  engine                          = "aurora-postgresql"
  engine_version                  = "17.4"
  db_cluster_parameter_group_name = aws_rds_cluster_parameter_group.green.name
  db_subnet_group_name            = "cell-a"
  vpc_security_group_ids          = ["sg-0123456789abcdef1"]

  # The same master login handling as blue: Secrets Manager keeps the password, never
  # Terraform state. switchyard logs in as the orchestrator login of the cell document.
  master_username             = "postgres"
  manage_master_user_password = true

  storage_encrypted                   = true
  kms_key_id                          = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
  iam_database_authentication_enabled = true
  deletion_protection                 = true
  backup_retention_period             = 7
  copy_tags_to_snapshot               = true
  enabled_cloudwatch_logs_exports     = ["postgresql"]
}

resource "aws_rds_cluster_instance" "green" {
  identifier                   = "cell-a-green-1"
  cluster_identifier           = aws_rds_cluster.green.id
  engine                       = aws_rds_cluster.green.engine
  engine_version               = aws_rds_cluster.green.engine_version
  instance_class               = "db.r6g.large"
  publicly_accessible          = false
  auto_minor_version_upgrade   = true
  performance_insights_enabled = true
  # Performance Insights data is encrypted with the cell's key too.
  performance_insights_kms_key_id = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
  monitoring_interval             = 60
  monitoring_role_arn             = "arn:aws:iam::123456789012:role/rds-monitoring"
}
