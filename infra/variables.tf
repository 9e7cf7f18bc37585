variable "name_prefix" {
  description = "Prefix of every name: Lambda functions are <prefix>-<operation> (the runbook assumes the default)."
  type        = string
  default     = "switchyard"

  validation {
    # IAM role and Lambda names are at most 64 characters; the longest operation takes 34.
    condition     = can(regex("^[a-z][a-z0-9-]{0,28}$", var.name_prefix))
    error_message = "name_prefix must be lowercase letters, digits and hyphens, starting with a letter, at most 29 characters."
  }
}

variable "lambda_dir" {
  description = "Directory holding <function>/bootstrap.zip, as `make build` writes them. Default: the repository's target/lambda."
  type        = string
  default     = null
}

variable "architecture" {
  description = "Instruction set of the functions: x86_64, or arm64 (build with `make build ARCH=arm64`)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "subnet_ids" {
  description = "Private subnets the functions run in: they must reach the clusters, PgBouncer, the downstream databases and the AWS APIs (RDS, SSM, ECS, ELB)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids must name at least one subnet."
  }
}

variable "security_group_ids" {
  description = "Security groups of the functions' network interfaces."
  type        = list(string)

  validation {
    condition     = length(var.security_group_ids) > 0
    error_message = "security_group_ids must name at least one security group."
  }
}

variable "kms_key_arn" {
  description = "KMS key encrypting the functions' environment variables and every log group this module creates (its key policy must allow the CloudWatch Logs service)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "ssm_kms_key_arns" {
  description = "Customer managed KMS keys of the SecureString parameters the functions read (credentials). Empty when they use the AWS managed key aws/ssm."
  type        = list(string)
  default     = []
}

variable "ca_bundle_layer_arn" {
  description = "Lambda layer (version ARN) holding the RDS CA bundle at ca_bundle_path. Required for AWS cells: connections verify the server certificate."
  type        = string
  default     = null
}

variable "ca_bundle_path" {
  description = "SWITCHYARD_CA_BUNDLE: path of the RDS CA bundle (PEM) in the function's file system. null leaves it unset (only a local cell runs without TLS)."
  type        = string
  default     = "/opt/rds/global-bundle.pem"
}

variable "pg_dump_layer_arn" {
  description = "Lambda layer (version ARN) holding pg_dump for copy-schema, at pg_dump_path."
  type        = string
  default     = null
}

variable "pg_dump_path" {
  description = "SWITCHYARD_PG_DUMP: path of pg_dump for copy-schema (a layer puts it under /opt/bin)."
  type        = string
  default     = "/opt/bin/pg_dump"
}

variable "reserved_concurrent_executions" {
  description = "Reserved concurrency of each function: a run calls each at most a few times at once, per cell."
  type        = number
  default     = 5

  validation {
    condition     = var.reserved_concurrent_executions >= 1
    error_message = "reserved_concurrent_executions must be at least 1 (0 would disable the function)."
  }
}

variable "log_retention_days" {
  description = "Retention of every log group (functions and state machines)."
  type        = number
  default     = 365
}

variable "log_level" {
  description = "Application log level of every function (Lambda's logging_config): TRACE, DEBUG, INFO, WARN, ERROR or FATAL."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"], var.log_level)
    error_message = "log_level must be one of TRACE, DEBUG, INFO, WARN, ERROR, FATAL."
  }
}

variable "tags" {
  description = "Tags on every resource this module creates that takes tags."
  type        = map(string)
  default     = {}
}

variable "permissions_boundary_arn" {
  description = "IAM permissions boundary (policy ARN) of every role this module creates; null for none."
  type        = string
  default     = null

  validation {
    condition     = var.permissions_boundary_arn == null ? true : can(regex("^arn:aws[a-z-]*:iam::", var.permissions_boundary_arn))
    error_message = "permissions_boundary_arn must be an IAM policy ARN."
  }
}

variable "alarm_actions" {
  description = "ARNs (e.g. SNS topics) notified when an execution fails, times out or is aborted."
  type        = list(string)
  default     = []
}

variable "replication_slot_lag_alarm_bytes" {
  description = "OldestReplicationSlotLag (bytes) above which each cell's writer alarms after 15 minutes. The default matches budgets.rollback_wal_bytes' (10 GiB)."
  type        = number
  default     = 10737418240
}

variable "transaction_logs_alarm_bytes" {
  description = "TransactionLogsDiskUsage (bytes) above which each cell's writer alarms after 15 minutes."
  type        = number
  default     = 21474836480
}

variable "cells" {
  description = <<-EOT
    The cells the functions may act on, keyed by cell_id (as in the cell document). Each names
    what the functions touch: the two clusters, the SSM parameters of the credentials, the
    PgBouncer fleet's ECS service (if discovered through ECS), the direct writers, the
    downstream subscribers and the run journal path. IAM policies are scoped to exactly these.
  EOT
  type = map(object({
    blue_cluster_identifier   = string
    green_cluster_identifier  = string
    orchestrator_parameter    = string
    application_roles_path    = string
    pgbouncer_admin_parameter = string
    pgbouncer_ecs_service = optional(object({
      ecs_cluster = string
      service     = string
    }))
    direct_writers = optional(list(object({
      ecs_cluster = string
      service     = string
    })), [])
    downstream = optional(list(object({
      credentials_parameter           = string
      publisher_credentials_parameter = string
      nlb_target_group_arn            = string
    })), [])
    # replication_parameter: the replication role's password, which start-replication
    # writes once per run; null is /switchyard/<cell_id>/replication, as in the cell document.
    journal_path          = optional(string)
    replication_parameter = optional(string)
    # document: the cell document itself (JSON text, e.g. file("cells/cell-a.json")).
    # Kept in SSM at /<name_prefix>/cells/<cell_id> for `switchyard --cell-id`; the plan
    # refuses one whose names differ from the fields above, so there is one description.
    document = optional(string)
  }))

  validation {
    condition     = length(var.cells) > 0
    error_message = "cells must name at least one cell."
  }

  validation {
    condition     = alltrue([for c in values(var.cells) : c.document == null ? true : can(jsondecode(c.document).cell_id)])
    error_message = "a cell's document must be a cell document (JSON with a cell_id)."
  }

  validation {
    condition     = alltrue([for c in values(var.cells) : endswith(c.application_roles_path, "/") && (c.journal_path == null ? true : endswith(c.journal_path, "/"))])
    error_message = "application_roles_path and journal_path must end with /, as in the cell document."
  }

  validation {
    condition     = alltrue(flatten([for c in values(var.cells) : [for d in c.downstream : startswith(d.nlb_target_group_arn, "arn:")]]))
    error_message = "downstream nlb_target_group_arn must be a target group ARN (the policy is scoped to it)."
  }
}
