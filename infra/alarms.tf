locals {
  # The execution outcomes that need a person: each state machine × each metric.
  execution_alarms = merge([
    for sm in keys(local.state_machines) : {
      for metric in ["ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"] :
      "${sm}-${metric}" => { state_machine = sm, metric = metric }
    }
  ]...)
}

resource "aws_cloudwatch_metric_alarm" "execution" {
  for_each = local.execution_alarms

  alarm_name        = "${var.name_prefix}-${each.value.state_machine}-${each.value.metric}"
  alarm_description = "switchyard ${each.value.state_machine}: an execution ended ${trimprefix(each.value.metric, "Executions")}. Read its history, then follow docs/runbook.md."

  namespace           = "AWS/States"
  metric_name         = each.value.metric
  dimensions          = { StateMachineArn = aws_sfn_state_machine.state_machine[each.value.state_machine].arn }
  statistic           = "Sum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  alarm_actions = var.alarm_actions
  ok_actions    = var.alarm_actions
  tags          = var.tags
}
