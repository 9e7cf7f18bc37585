output "function_arns" {
  description = "Function ARN by operation name (e.g. check-slot-lag)."
  value       = { for fn, f in aws_lambda_function.function : fn => f.arn }
}

output "function_versions" {
  description = "The version of each function this apply published, which the state machines invoke (and the live alias names)."
  value       = { for fn, f in aws_lambda_function.function : fn => f.version }
}

output "function_names" {
  description = "Lambda function name by operation name: <name_prefix>-<operation>."
  value       = { for fn, f in aws_lambda_function.function : fn => f.function_name }
}

output "function_role_arns" {
  description = "Execution role ARN by operation name."
  value       = { for fn, r in aws_iam_role.function : fn => r.arn }
}

output "state_machine_arns" {
  description = "State machine ARN by name: prepare, switchover, abandon-prepare, finalize, abort."
  value       = merge({ for name, sm in aws_sfn_state_machine.state_machine : name => sm.arn }, { fleet = aws_sfn_state_machine.fleet.arn })
}

output "state_machine_role_arn" {
  description = "The role every state machine runs as."
  value       = aws_iam_role.states.arn
}

output "cell_document_parameters" {
  description = "Each cell's document in SSM, by cell_id: what `switchyard --cell-id` reads"
  value       = { for id, p in aws_ssm_parameter.cell_document : id => p.name }
}

output "executions_topic_arn" {
  description = "SNS topic told of every execution that ends: its ARN, name (cell and phase) and status"
  value       = aws_sns_topic.executions.arn
}
