# What each function may do, from what its code calls (functions/*/src, crates/aws,
# crates/operation): nothing else. Resources are the cells' own (var.cells).

locals {
  rds_arn = "arn:${local.partition}:rds:${local.region}:${local.account}"
  ssm_arn = "arn:${local.partition}:ssm:${local.region}:${local.account}:parameter"
  ecs_arn = "arn:${local.partition}:ecs:${local.region}:${local.account}"

  cells = [for id, c in var.cells : merge(c, {
    id                    = id
    journal_path          = c.journal_path == null ? "/switchyard/${id}/journal/" : c.journal_path
    replication_parameter = c.replication_parameter == null ? "/switchyard/${id}/replication" : c.replication_parameter
  })]

  # Blue and green under their own identifiers (what Deps::endpoint resolves).
  cell_clusters = flatten([for c in local.cells : [
    "${local.rds_arn}:cluster:${c.blue_cluster_identifier}",
    "${local.rds_arn}:cluster:${c.green_cluster_identifier}",
  ]])
  # rename-clusters parks blue as <blue>-blue-<major> (CellDocument::blue_renamed_identifier).
  parked_clusters = [for c in local.cells : "${local.rds_arn}:cluster:${c.blue_cluster_identifier}-blue-*"]
  blue_clusters   = [for c in local.cells : "${local.rds_arn}:cluster:${c.blue_cluster_identifier}"]
  # snapshot-cluster names its snapshots <blue>-pre-upgrade-<run>.
  snapshots = [for c in local.cells : "${local.rds_arn}:cluster-snapshot:${c.blue_cluster_identifier}-pre-upgrade-*"]
  # close-rollback-window names the parked old blue's last one <blue>-blue-<major>-final.
  final_snapshots = [for c in local.cells : "${local.rds_arn}:cluster-snapshot:${c.blue_cluster_identifier}-blue-*-final"]
  # delete-old-cluster deletes the parked old blue's instances by identifier. An instance
  # keeps its name when its cluster is renamed: only those named <blue>-blue-* match.
  parked_instances = [for c in local.cells : "${local.rds_arn}:db:${c.blue_cluster_identifier}-blue-*"]

  # An SSM parameter's ARN holds its name after "parameter", with exactly one slash between.
  orchestrator_parameters = distinct([for c in local.cells : "${local.ssm_arn}/${trimprefix(c.orchestrator_parameter, "/")}"])
  pgbouncer_parameters    = distinct([for c in local.cells : "${local.ssm_arn}/${trimprefix(c.pgbouncer_admin_parameter, "/")}"])
  # GetParametersByPath is authorized on the path itself; the parameters under it by the wildcard.
  application_roles = distinct(flatten([for c in local.cells : [
    "${local.ssm_arn}/${trimprefix(trimsuffix(c.application_roles_path, "/"), "/")}",
    "${local.ssm_arn}/${trimprefix(c.application_roles_path, "/")}*",
  ]]))
  journals               = [for c in local.cells : "${local.ssm_arn}/${trimprefix(c.journal_path, "/")}*"]
  replication_parameters = [for c in local.cells : "${local.ssm_arn}/${trimprefix(c.replication_parameter, "/")}"]

  downstreams                 = flatten([for c in local.cells : c.downstream])
  downstream_parameters       = distinct([for d in local.downstreams : "${local.ssm_arn}/${trimprefix(d.credentials_parameter, "/")}"])
  downstream_publisher_params = distinct([for d in local.downstreams : "${local.ssm_arn}/${trimprefix(d.publisher_credentials_parameter, "/")}"])
  target_groups               = distinct([for d in local.downstreams : d.nlb_target_group_arn])

  pgbouncer_services         = [for c in local.cells : c.pgbouncer_ecs_service if c.pgbouncer_ecs_service != null]
  pgbouncer_ecs_clusters     = distinct([for s in local.pgbouncer_services : "${local.ecs_arn}:cluster/${s.ecs_cluster}"])
  pgbouncer_tasks            = distinct([for s in local.pgbouncer_services : "${local.ecs_arn}:task/${s.ecs_cluster}/*"])
  direct_writers             = flatten([for c in local.cells : c.direct_writers])
  direct_writer_services     = distinct([for w in local.direct_writers : "${local.ecs_arn}:service/${w.ecs_cluster}/${w.service}"])
  direct_writer_ecs_clusters = distinct([for w in local.direct_writers : "${local.ecs_arn}:cluster/${w.ecs_cluster}"])
  direct_writer_tasks        = distinct([for w in local.direct_writers : "${local.ecs_arn}:task/${w.ecs_cluster}/*"])

  # Every statement a function may get; `needed` drops one whose resources the cells lack
  # (IAM refuses an empty Resource).
  statements = {
    describe_cell_clusters = {
      needed = true
      statement = {
        Sid      = "DescribeCellClusters"
        Effect   = "Allow"
        Action   = ["rds:DescribeDBClusters"]
        Resource = local.cell_clusters
      }
    }
    # DescribeDBClusters without an identifier (listing every cluster to find the parked
    # blue) is authorized on the account's cluster:* ARN, never on one cluster's.
    list_clusters = {
      needed = true
      statement = {
        Sid      = "ListClusters"
        Effect   = "Allow"
        Action   = ["rds:DescribeDBClusters"]
        Resource = ["${local.rds_arn}:cluster:*"]
      }
    }
    # refresh-nlb-target reads the writer instance's own endpoint (never the cluster's DNS
    # name, which lags a rename). Which instances a cell's clusters hold is not known here,
    # and the call only describes: the account's db:* ARN.
    describe_instances = {
      needed = true
      statement = {
        Sid      = "DescribeWriterInstances"
        Effect   = "Allow"
        Action   = ["rds:DescribeDBInstances"]
        Resource = ["${local.rds_arn}:db:*"]
      }
    }
    rename_clusters = {
      needed = true
      statement = {
        Sid      = "RenameCellClusters"
        Effect   = "Allow"
        Action   = ["rds:ModifyDBCluster"]
        Resource = concat(local.cell_clusters, local.parked_clusters)
      }
    }
    snapshot_blue = {
      needed = true
      statement = {
        Sid      = "SnapshotBlue"
        Effect   = "Allow"
        Action   = ["rds:CreateDBClusterSnapshot"]
        Resource = concat(local.blue_clusters, local.snapshots)
      }
    }
    tag_snapshots = {
      needed = true
      statement = {
        Sid      = "TagRunSnapshots"
        Effect   = "Allow"
        Action   = ["rds:AddTagsToResource"]
        Resource = local.snapshots
      }
    }
    describe_snapshots = {
      needed = true
      statement = {
        Sid      = "DescribeRunSnapshots"
        Effect   = "Allow"
        Action   = ["rds:DescribeDBClusterSnapshots"]
        Resource = local.snapshots
      }
    }
    # close-rollback-window snapshots the old blue under its parked name, never blue's own.
    snapshot_old_blue = {
      needed = true
      statement = {
        Sid      = "SnapshotOldBlue"
        Effect   = "Allow"
        Action   = ["rds:CreateDBClusterSnapshot"]
        Resource = concat(local.parked_clusters, local.final_snapshots)
      }
    }
    tag_final_snapshots = {
      needed = true
      statement = {
        Sid      = "TagFinalSnapshots"
        Effect   = "Allow"
        Action   = ["rds:AddTagsToResource"]
        Resource = local.final_snapshots
      }
    }
    describe_final_snapshots = {
      needed = true
      statement = {
        Sid      = "DescribeFinalSnapshots"
        Effect   = "Allow"
        Action   = ["rds:DescribeDBClusterSnapshots"]
        Resource = local.final_snapshots
      }
    }
    # delete-old-cluster deletes the parked old blue (its instances first), never a cluster
    # under blue's own name (green's, after the switch), and takes no snapshot of its own.
    delete_old_blue = {
      needed = true
      statement = {
        Sid      = "DeleteOldBlue"
        Effect   = "Allow"
        Action   = ["rds:DeleteDBCluster"]
        Resource = local.parked_clusters
      }
    }
    delete_old_blue_instances = {
      needed = true
      statement = {
        Sid      = "DeleteOldBlueInstances"
        Effect   = "Allow"
        Action   = ["rds:DeleteDBInstance"]
        Resource = local.parked_instances
      }
    }
    # Logins are read with GetParameters, several names a call, once per invocation: SSM's
    # rate is per account and a fleet shares it.
    orchestrator_login = {
      needed = true
      statement = {
        Sid      = "ReadOrchestratorLogin"
        Effect   = "Allow"
        Action   = ["ssm:GetParameters"]
        Resource = local.orchestrator_parameters
      }
    }
    application_roles = {
      needed = true
      statement = {
        Sid      = "ReadApplicationRoles"
        Effect   = "Allow"
        Action   = ["ssm:GetParametersByPath"]
        Resource = local.application_roles
      }
    }
    pgbouncer_login = {
      needed = true
      statement = {
        Sid      = "ReadPgBouncerAdminLogin"
        Effect   = "Allow"
        Action   = ["ssm:GetParameters"]
        Resource = local.pgbouncer_parameters
      }
    }
    # ListTasks is authorized on container instances, not tasks: the ecs:cluster condition
    # is how AWS scopes it (Resource "*" is required).
    pgbouncer_list_tasks = {
      needed = length(local.pgbouncer_ecs_clusters) > 0
      statement = {
        Sid       = "ListPgBouncerTasks"
        Effect    = "Allow"
        Action    = ["ecs:ListTasks"]
        Resource  = ["*"]
        Condition = { ArnEquals = { "ecs:cluster" = local.pgbouncer_ecs_clusters } }
      }
    }
    pgbouncer_describe_tasks = {
      needed = length(local.pgbouncer_tasks) > 0
      statement = {
        Sid      = "DescribePgBouncerTasks"
        Effect   = "Allow"
        Action   = ["ecs:DescribeTasks"]
        Resource = local.pgbouncer_tasks
      }
    }
    direct_writer_services = {
      needed = length(local.direct_writer_services) > 0
      statement = {
        Sid      = "ScaleDirectWriters"
        Effect   = "Allow"
        Action   = ["ecs:DescribeServices", "ecs:UpdateService"]
        Resource = local.direct_writer_services
      }
    }
    direct_writer_list_tasks = {
      needed = length(local.direct_writer_ecs_clusters) > 0
      statement = {
        Sid       = "ListDirectWriterTasks"
        Effect    = "Allow"
        Action    = ["ecs:ListTasks"]
        Resource  = ["*"]
        Condition = { ArnEquals = { "ecs:cluster" = local.direct_writer_ecs_clusters } }
      }
    }
    direct_writer_describe_tasks = {
      needed = length(local.direct_writer_tasks) > 0
      statement = {
        Sid      = "DescribeDirectWriterTasks"
        Effect   = "Allow"
        Action   = ["ecs:DescribeTasks"]
        Resource = local.direct_writer_tasks
      }
    }
    downstream_login = {
      needed = length(local.downstream_parameters) > 0
      statement = {
        Sid      = "ReadDownstreamLogin"
        Effect   = "Allow"
        Action   = ["ssm:GetParameters"]
        Resource = local.downstream_parameters
      }
    }
    downstream_publisher_login = {
      needed = length(local.downstream_publisher_params) > 0
      statement = {
        Sid      = "ReadDownstreamPublisherLogin"
        Effect   = "Allow"
        Action   = ["ssm:GetParameters"]
        Resource = local.downstream_publisher_params
      }
    }
    # DescribeTargetGroups (by name) and DescribeTargetHealth have no resource-level
    # permissions: AWS requires Resource "*".
    describe_target_groups = {
      needed = length(local.target_groups) > 0
      statement = {
        Sid      = "DescribeTargetGroups"
        Effect   = "Allow"
        Action   = ["elasticloadbalancing:DescribeTargetGroups", "elasticloadbalancing:DescribeTargetHealth"]
        Resource = ["*"]
      }
    }
    refresh_targets = {
      needed = length(local.target_groups) > 0
      statement = {
        Sid      = "RefreshDownstreamTargets"
        Effect   = "Allow"
        Action   = ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"]
        Resource = local.target_groups
      }
    }
    journal_read = {
      needed = true
      statement = {
        Sid      = "ReadJournal"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter", "ssm:GetParameters"]
        Resource = local.journals
      }
    }
    journal_create = {
      needed = true
      statement = {
        Sid      = "WriteJournal"
        Effect   = "Allow"
        Action   = ["ssm:PutParameter"]
        Resource = local.journals
      }
    }
    journal_delete = {
      needed = true
      statement = {
        Sid      = "DeleteJournal"
        Effect   = "Allow"
        Action   = ["ssm:DeleteParameter"]
        Resource = local.journals
      }
    }
    # start-replication rotates the replication role's password once per run: it reads the
    # run's entry back on a retry, and writes a new one for a new run.
    replication_login = {
      needed = true
      statement = {
        Sid      = "RotateReplicationLogin"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter", "ssm:PutParameter"]
        Resource = local.replication_parameters
      }
    }
    # finalize-replication (reverse) reads it after the switch: the old blue's subscription
    # to green logs in as the same role, with the same password.
    replication_login_read = {
      needed = true
      statement = {
        Sid      = "ReadReplicationLogin"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = local.replication_parameters
      }
    }
    # Writing a SecureString under a customer managed key encrypts with it.
    encrypt_secrets = {
      needed = length(var.ssm_kms_key_arns) > 0
      statement = {
        Sid       = "EncryptSecureStrings"
        Effect    = "Allow"
        Action    = ["kms:Encrypt"]
        Resource  = var.ssm_kms_key_arns
        Condition = { StringEquals = { "kms:ViaService" = "ssm.${local.region}.amazonaws.com" } }
      }
    }
    # Credentials are SecureStrings; with a customer managed key, reading one decrypts.
    decrypt_secrets = {
      needed = length(var.ssm_kms_key_arns) > 0
      statement = {
        Sid       = "DecryptSecureStrings"
        Effect    = "Allow"
        Action    = ["kms:Decrypt"]
        Resource  = var.ssm_kms_key_arns
        Condition = { StringEquals = { "kms:ViaService" = "ssm.${local.region}.amazonaws.com" } }
      }
    }
  }

  # Per function, the statements its code needs. "connect" = Deps::connect: the cluster's
  # endpoint (DescribeDBClusters) and the orchestrator's login (SSM).
  function_statement_names = {
    # journal_read on every function that changes the cell: each checks its caller holds
    # the run lock (the fencing token) and reads the run's decision before acting.
    "preflight"                         = ["describe_cell_clusters", "orchestrator_login", "pgbouncer_login", "pgbouncer_list_tasks", "pgbouncer_describe_tasks", "downstream_login", "application_roles", "journal_read", "decrypt_secrets"]
    "snapshot-cluster"                  = ["snapshot_blue", "tag_snapshots", "describe_snapshots", "journal_read"]
    "sync-roles"                        = ["describe_cell_clusters", "orchestrator_login", "application_roles", "journal_read", "decrypt_secrets"]
    "copy-schema"                       = ["describe_cell_clusters", "orchestrator_login", "journal_read", "decrypt_secrets"]
    "start-replication"                 = ["describe_cell_clusters", "orchestrator_login", "replication_login", "journal_read", "decrypt_secrets", "encrypt_secrets"]
    "check-replication"                 = ["describe_cell_clusters", "orchestrator_login", "decrypt_secrets"]
    "check-drift"                       = ["describe_cell_clusters", "orchestrator_login", "application_roles", "journal_read", "decrypt_secrets"]
    "analyze-green"                     = ["describe_cell_clusters", "orchestrator_login", "journal_read", "decrypt_secrets"]
    "verify-data"                       = ["describe_cell_clusters", "orchestrator_login", "decrypt_secrets"]
    "abandon-prepare"                   = ["describe_cell_clusters", "orchestrator_login", "journal_read", "journal_create", "decrypt_secrets"]
    "acquire-lock"                      = ["journal_read", "journal_create", "journal_delete"]
    "release-lock"                      = ["journal_read", "journal_delete"]
    "scale-services"                    = ["direct_writer_services", "direct_writer_list_tasks", "direct_writer_describe_tasks", "journal_read", "journal_create", "journal_delete"]
    "pause-pgbouncer"                   = ["pgbouncer_login", "pgbouncer_list_tasks", "pgbouncer_describe_tasks", "journal_read", "journal_create", "decrypt_secrets"]
    "revoke-writes"                     = ["describe_cell_clusters", "orchestrator_login", "application_roles", "journal_read", "decrypt_secrets"]
    "restore-writes"                    = ["describe_cell_clusters", "orchestrator_login", "journal_read", "journal_create", "decrypt_secrets"]
    "drop-downstream-subscriptions"     = ["describe_cell_clusters", "orchestrator_login", "downstream_login", "journal_read", "journal_create", "decrypt_secrets"]
    "check-slot-lag"                    = ["describe_cell_clusters", "orchestrator_login", "journal_read", "decrypt_secrets"]
    "sync-sequences"                    = ["describe_cell_clusters", "orchestrator_login", "journal_read", "decrypt_secrets"]
    "finalize-replication"              = ["list_clusters", "orchestrator_login", "replication_login_read", "journal_read", "journal_create", "decrypt_secrets"]
    "rename-clusters"                   = ["list_clusters", "rename_clusters", "orchestrator_login", "journal_read", "journal_create", "journal_delete", "decrypt_secrets"]
    "refresh-nlb-target"                = ["describe_cell_clusters", "describe_instances", "describe_target_groups", "refresh_targets", "journal_read", "journal_create"]
    "recreate-downstream-subscriptions" = ["describe_cell_clusters", "orchestrator_login", "downstream_login", "downstream_publisher_login", "journal_read", "journal_create", "decrypt_secrets"]
    "resume-pgbouncer"                  = ["describe_cell_clusters", "orchestrator_login", "pgbouncer_login", "pgbouncer_list_tasks", "pgbouncer_describe_tasks", "application_roles", "journal_read", "journal_create", "decrypt_secrets"]
    "close-rollback-window"             = ["list_clusters", "snapshot_old_blue", "tag_final_snapshots", "describe_final_snapshots", "orchestrator_login", "journal_read", "decrypt_secrets"]
    "delete-old-cluster"                = ["list_clusters", "describe_final_snapshots", "delete_old_blue", "delete_old_blue_instances", "journal_read"]
  }

  function_statements = {
    for fn, names in local.function_statement_names : fn => [
      for name in names : local.statements[name].statement if local.statements[name].needed
    ]
  }
}
