# Every execution of this deployment's state machines that ends sends its ARN, its name
# (`<cell_id>-<phase>-<utc>`, or `fleet-<phase>-<utc>`) and its status to the executions
# topic: what the alarms cannot say (they carry no ARN). The status is Step Functions'
# (SUCCEEDED, FAILED, TIMED_OUT, ABORTED), not the run's outcome from the closed set
# (switched, aborted, abort incomplete, …): that takes the history, so the message names
# the command that reads it. Subscribe the on-call's endpoints to output
# `executions_topic_arn`.

resource "aws_sns_topic" "executions" {
  name              = "${var.name_prefix}-executions"
  kms_master_key_id = var.kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "executions_topic" {
  statement {
    sid       = "EventBridgePublishes"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.executions.arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.execution_ended.arn]
    }
  }
}

resource "aws_sns_topic_policy" "executions" {
  arn    = aws_sns_topic.executions.arn
  policy = data.aws_iam_policy_document.executions_topic.json
}

resource "aws_cloudwatch_event_rule" "execution_ended" {
  name        = "${var.name_prefix}-execution-ended"
  description = "switchyard: an execution of ${var.name_prefix}'s state machines ended"
  # A version's executions name the version's ARN (`…:stateMachine:<name>:<version>`):
  # matched by the state machines' common prefix.
  event_pattern = jsonencode({
    source        = ["aws.states"]
    "detail-type" = ["Step Functions Execution Status Change"]
    detail = {
      status          = ["SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED"]
      stateMachineArn = [{ prefix = "arn:${local.partition}:states:${local.region}:${local.account}:stateMachine:${var.name_prefix}-" }]
    }
  })
  tags = var.tags
}

resource "aws_cloudwatch_event_target" "execution_ended" {
  rule      = aws_cloudwatch_event_rule.execution_ended.name
  target_id = "executions-topic"
  arn       = aws_sns_topic.executions.arn

  input_transformer {
    input_paths = {
      execution = "$.detail.executionArn"
      name      = "$.detail.name"
      status    = "$.detail.status"
    }
    input_template = "{\"execution\": <execution>, \"name\": <name>, \"status\": <status>, \"outcome\": \"switchyard report --execution-arn <execution> (fleets: switchyard fleet report --execution-arn <execution>)\"}"
  }
}
