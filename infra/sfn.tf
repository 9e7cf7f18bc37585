locals {
  # What every state machine's role needs to log and trace. Step Functions' log delivery
  # calls have no resource-level permissions: AWS requires Resource "*" (Step Functions
  # developer guide, "IAM policies for logging"); nor has X-Ray.
  state_machine_logging_statements = [
    {
      Sid    = "LogDelivery"
      Effect = "Allow"
      Action = [
        "logs:CreateLogDelivery",
        "logs:GetLogDelivery",
        "logs:UpdateLogDelivery",
        "logs:DeleteLogDelivery",
        "logs:ListLogDeliveries",
        "logs:PutResourcePolicy",
        "logs:DescribeResourcePolicies",
        "logs:DescribeLogGroups",
      ]
      Resource = ["*"]
    },
    {
      Sid      = "XRayTraces"
      Effect   = "Allow"
      Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"]
      Resource = ["*"]
    },
  ]
  state_machines = {
    # The key is the ASL file's name and the state machine's (<name_prefix>-<key>).
    "prepare"         = "${path.module}/../state-machine/prepare.asl.json"
    "switchover"      = "${path.module}/../state-machine/switchover.asl.json"
    "abandon-prepare" = "${path.module}/../state-machine/abandon-prepare.asl.json"
    "finalize"        = "${path.module}/../state-machine/finalize.asl.json"
    "abort"           = "${path.module}/../state-machine/abort.asl.json"
  }
}

data "aws_iam_policy_document" "states_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "states" {
  name                 = "${var.name_prefix}-states"
  description          = "switchyard state machines: invoke the functions, log, trace"
  assume_role_policy   = data.aws_iam_policy_document.states_assume.json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags
}

resource "aws_iam_role_policy" "states" {
  name = "${var.name_prefix}-states"
  role = aws_iam_role.states.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(local.state_machine_logging_statements, [
      {
        Sid      = "InvokeFunctions"
        Effect   = "Allow"
        Action   = ["lambda:InvokeFunction"]
        Resource = flatten([for fn in aws_lambda_function.function : [fn.arn, "${fn.arn}:*"]])
      },
    ])
  })
}

resource "aws_cloudwatch_log_group" "state_machine" {
  for_each = local.state_machines

  # /aws/vendedlogs/ keeps CloudWatch Logs' resource policy small (AWS's advice for
  # Step Functions logging).
  name              = "/aws/vendedlogs/states/${var.name_prefix}-${each.key}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_sfn_state_machine" "state_machine" {
  for_each = local.state_machines
  #checkov:skip=CKV_AWS_285:Executions are logged at level ALL, but without execution data on purpose: payloads carry the cell document and run state, which the execution history already keeps under Step Functions' access control.

  name     = "${var.name_prefix}-${each.key}"
  type     = "STANDARD"
  role_arn = aws_iam_role.states.arn

  # Each ${<function>} placeholder (dashes as underscores) becomes the ARN of the version
  # of that function this apply published.
  definition = templatefile(each.value, local.state_machine_functions)

  # Each apply that changes a definition publishes a state machine version: what ran
  # when is on record.
  publish = true

  logging_configuration {
    log_destination = "${aws_cloudwatch_log_group.state_machine[each.key].arn}:*"
    level           = "ALL"
    # Execution data is every state's input and output: the cell document and run state.
    # They hold SSM names, never secrets, but the execution history already keeps them
    # under Step Functions' own access control; the logs would copy them to a second place.
    include_execution_data = false
  }

  tracing_configuration {
    enabled = true
  }

  tags = var.tags

  depends_on = [aws_iam_role_policy.states]
}

# ---------------------------------------------------------------------------------------
# The fleet: many cells, canary first, each cell's prepare or switchover a child execution
# of the version of that state machine this apply published. Its own role: it can call
# preflight, start and watch those two state machines' runs, nothing else.

locals {
  fleet_children = ["prepare", "switchover"]
}

resource "aws_iam_role" "fleet" {
  name                 = "${var.name_prefix}-fleet"
  description          = "switchyard fleet: preflight each cell, start and watch its prepare or switchover"
  assume_role_policy   = data.aws_iam_policy_document.states_assume.json
  permissions_boundary = var.permissions_boundary_arn
  tags                 = var.tags
}

resource "aws_iam_role_policy" "fleet" {
  name = "${var.name_prefix}-fleet"
  role = aws_iam_role.fleet.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(local.state_machine_logging_statements, [
      {
        Sid      = "Preflight"
        Effect   = "Allow"
        Action   = ["lambda:InvokeFunction"]
        Resource = [aws_lambda_function.function["preflight"].arn, "${aws_lambda_function.function["preflight"].arn}:*"]
      },
      # startExecution.sync: start the child, then read and (if this fleet run is stopped)
      # stop it; `:*` covers the published versions the definition names.
      {
        Sid    = "StartCellRuns"
        Effect = "Allow"
        Action = ["states:StartExecution"]
        Resource = flatten([for name in local.fleet_children : [
          aws_sfn_state_machine.state_machine[name].arn,
          "${aws_sfn_state_machine.state_machine[name].arn}:*",
        ]])
      },
      {
        Sid      = "WatchCellRuns"
        Effect   = "Allow"
        Action   = ["states:DescribeExecution", "states:StopExecution"]
        Resource = [for name in local.fleet_children : "arn:${local.partition}:states:${local.region}:${local.account}:execution:${var.name_prefix}-${name}:*"]
      },
      # How Step Functions learns a child ended: its managed EventBridge rule (Step
      # Functions developer guide, "IAM policies for ... Step Functions").
      {
        Sid      = "SyncRule"
        Effect   = "Allow"
        Action   = ["events:PutTargets", "events:PutRule", "events:DescribeRule"]
        Resource = ["arn:${local.partition}:events:${local.region}:${local.account}:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule"]
      },
    ])
  })
}

resource "aws_cloudwatch_log_group" "fleet" {
  name              = "/aws/vendedlogs/states/${var.name_prefix}-fleet"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_sfn_state_machine" "fleet" {
  #checkov:skip=CKV_AWS_285:Executions are logged at level ALL, but without execution data on purpose: payloads carry the cell documents, which the execution history already keeps under Step Functions' access control.

  name     = "${var.name_prefix}-fleet"
  type     = "STANDARD"
  role_arn = aws_iam_role.fleet.arn

  # ${preflight} becomes its published version; ${prepare_state_machine} and
  # ${switchover_state_machine} the versions of those state machines this apply published,
  # so a fleet run keeps the definitions it started with across an apply.
  definition = templatefile("${path.module}/../state-machine/fleet.asl.json", merge(local.state_machine_functions, {
    prepare_state_machine    = aws_sfn_state_machine.state_machine["prepare"].state_machine_version_arn
    switchover_state_machine = aws_sfn_state_machine.state_machine["switchover"].state_machine_version_arn
  }))

  publish = true

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.fleet.arn}:*"
    level                  = "ALL"
    include_execution_data = false
  }

  tracing_configuration {
    enabled = true
  }

  tags = var.tags

  depends_on = [aws_iam_role_policy.fleet]
}
