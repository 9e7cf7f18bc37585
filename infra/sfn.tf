locals {
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
    Statement = [
      {
        Sid      = "InvokeFunctions"
        Effect   = "Allow"
        Action   = ["lambda:InvokeFunction"]
        Resource = flatten([for fn in aws_lambda_function.function : [fn.arn, "${fn.arn}:*"]])
      },
      # Step Functions' log delivery calls have no resource-level permissions: AWS requires
      # Resource "*" (Step Functions developer guide, "IAM policies for logging").
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
      # X-Ray has no resource-level permissions: AWS requires Resource "*".
      {
        Sid      = "XRayTraces"
        Effect   = "Allow"
        Action   = ["xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"]
        Resource = ["*"]
      },
    ]
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
