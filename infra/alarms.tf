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

locals {
  # Between prepare and switchover nothing else watches replication: green's slots on blue
  # keep WAL while green is behind or stopped, until blue's storage fills. After the
  # switch, the cell's name is green's, holding the old blue's slot switchyard_reverse.
  # Alarms follow the name (the cluster clients reach), on its writer: AWS's advice for
  # Aurora alarms is the Role dimension, not an instance, whose role can change.
  replication_alarms = merge([
    for cell_id, cell in var.cells : {
      for metric, threshold in {
        OldestReplicationSlotLag = var.replication_slot_lag_alarm_bytes
        TransactionLogsDiskUsage = var.transaction_logs_alarm_bytes
      } :
      "${cell_id}-${metric}" => { cluster = cell.blue_cluster_identifier, metric = metric, threshold = threshold }
    }
  ]...)
}

resource "aws_cloudwatch_metric_alarm" "replication" {
  for_each = local.replication_alarms

  alarm_name        = "${var.name_prefix}-${each.key}"
  alarm_description = "switchyard: ${each.value.metric} of ${each.value.cluster}'s writer has stayed above ${each.value.threshold} bytes for 15 minutes: a replication slot keeps WAL. Run switchyard status for the cell (subscriptions, slots, lag), then docs/runbook.md."

  namespace   = "AWS/RDS"
  metric_name = each.value.metric
  dimensions = {
    DBClusterIdentifier = each.value.cluster
    Role                = "WRITER"
  }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 3
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  alarm_actions = var.alarm_actions
  ok_actions    = var.alarm_actions
  tags          = var.tags
}

# One dashboard for the deployment: every cell's replication metrics, every state
# machine's outcomes.
resource "aws_cloudwatch_dashboard" "fleet" {
  dashboard_name = "${var.name_prefix}-fleet"
  dashboard_body = jsonencode({
    widgets = concat(
      [
        for i, metric in ["OldestReplicationSlotLag", "TransactionLogsDiskUsage"] : {
          type   = "metric"
          x      = 12 * i
          y      = 0
          width  = 12
          height = 6
          properties = {
            title   = "${metric} (writer, bytes)"
            region  = local.region
            stat    = "Maximum"
            period  = 300
            metrics = [for cell_id, cell in var.cells : ["AWS/RDS", metric, "DBClusterIdentifier", cell.blue_cluster_identifier, "Role", "WRITER", { label = cell_id }]]
          }
        }
      ],
      [
        {
          type   = "metric"
          x      = 0
          y      = 6
          width  = 24
          height = 6
          properties = {
            title  = "Executions"
            region = local.region
            stat   = "Sum"
            period = 3600
            metrics = flatten([
              for name, sm in aws_sfn_state_machine.state_machine : [
                for metric in ["ExecutionsSucceeded", "ExecutionsFailed", "ExecutionsAborted", "ExecutionsTimedOut"] :
                ["AWS/States", metric, "StateMachineArn", sm.arn, { label = "${name} ${trimprefix(metric, "Executions")}" }]
              ]
            ])
          }
        }
      ]
    )
  })
}
