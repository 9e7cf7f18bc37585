data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  # One Lambda (and one role, one log group) per operation; functions.json is the list and
  # holds each one's timeout and memory, shared with the state machine tests.
  functions  = jsondecode(file("${path.module}/../state-machine/functions.json"))
  lambda_dir = var.lambda_dir == null ? "${path.module}/../target/lambda" : var.lambda_dir

  function_names = { for fn, _ in local.functions : fn => "${var.name_prefix}-${fn}" }

  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.region
  account   = data.aws_caller_identity.current.account_id

  # The ASL placeholders: ${check_slot_lag} for check-slot-lag, filled with the version this
  # apply published (qualified ARN), not the unqualified function or an alias: an
  # execution keeps the definition it started with, so one that runs across an apply (a
  # prepare takes days) keeps calling the code it started with.
  state_machine_functions = { for fn, _ in local.functions : replace(fn, "-", "_") => aws_lambda_function.function[fn].qualified_arn }
}
