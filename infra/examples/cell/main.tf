# One cell (the shape of cells/local.json, on AWS): build the zips first (`make build`),
# then `terraform init && terraform apply` here.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0, < 7.0"
    }
  }
}

provider "aws" {
  # The functions act on cells in their own region only.
  region = "eu-west-1"
}

module "switchyard" {
  source = "../.."

  subnet_ids          = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
  security_group_ids  = ["sg-0123456789abcdef0"]
  kms_key_arn         = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
  ca_bundle_layer_arn = "arn:aws:lambda:eu-west-1:123456789012:layer:rds-ca-bundle:1"
  pg_dump_layer_arn   = "arn:aws:lambda:eu-west-1:123456789012:layer:pg-dump-15:1"
  alarm_actions       = ["arn:aws:sns:eu-west-1:123456789012:switchyard-alarms"]

  cells = {
    "cell-a" = {
      blue_cluster_identifier   = "cell-a"
      green_cluster_identifier  = "cell-a-green"
      orchestrator_parameter    = "/switchyard/cell-a/orchestrator"
      application_roles_path    = "/switchyard/cell-a/roles/"
      pgbouncer_admin_parameter = "/switchyard/cell-a/pgbouncer-admin"
      pgbouncer_ecs_service = {
        ecs_cluster = "cell-a"
        service     = "pgbouncer"
      }
      direct_writers = [
        { ecs_cluster = "cell-a", service = "ledger-jobs" },
      ]
      downstream = [
        {
          credentials_parameter           = "/switchyard/cell-a/downstream/search/admin"
          publisher_credentials_parameter = "/switchyard/cell-a/downstream/search/replicator"
          nlb_target_group_arn            = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/cell-a-search/0123456789abcdef"
        },
      ]
    }
  }
}

output "state_machine_arns" {
  value = module.switchyard.state_machine_arns
}

output "function_names" {
  value = module.switchyard.function_names
}
