resource "aws_cloudwatch_log_group" "function" {
  for_each = local.functions

  name              = "/aws/lambda/${local.function_names[each.key]}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

resource "aws_lambda_function" "function" {
  for_each = local.functions
  #checkov:skip=CKV_AWS_116:Step Functions invokes every function synchronously and handles failures (Retry/Catch); a dead-letter queue only applies to asynchronous invocations.
  #checkov:skip=CKV_AWS_272:cargo-lambda zips are built and deployed from this repository by the same pipeline; there is no separate signing step to verify.

  function_name = local.function_names[each.key]
  description   = "switchyard ${each.key} (functions/${each.key})"
  role          = aws_iam_role.function[each.key].arn

  runtime       = "provided.al2023"
  handler       = "bootstrap"
  architectures = [var.architecture]

  filename         = "${local.lambda_dir}/${each.key}/bootstrap.zip"
  source_code_hash = filebase64sha256("${local.lambda_dir}/${each.key}/bootstrap.zip")

  timeout     = each.value.timeout_seconds
  memory_size = each.value.memory_mb

  # Every apply that changes the code or configuration publishes a version: the state
  # machines invoke that version (functions.tf), the `live` alias follows it.
  publish = true

  # JSON lines at var.log_level: the runtime sets AWS_LAMBDA_LOG_FORMAT and
  # AWS_LAMBDA_LOG_LEVEL from this, which the functions' tracing honours.
  logging_config {
    log_format            = "JSON"
    log_group             = aws_cloudwatch_log_group.function[each.key].name
    application_log_level = var.log_level
    system_log_level      = "WARN"
  }

  reserved_concurrent_executions = var.reserved_concurrent_executions
  kms_key_arn                    = var.kms_key_arn

  layers = compact([
    var.ca_bundle_layer_arn,
    each.key == "copy-schema" ? var.pg_dump_layer_arn : null,
  ])

  environment {
    variables = merge(
      var.ca_bundle_path == null ? {} : { SWITCHYARD_CA_BUNDLE = var.ca_bundle_path },
      each.key == "copy-schema" ? { SWITCHYARD_PG_DUMP = var.pg_dump_path } : {},
    )
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = var.security_group_ids
  }

  tracing_config {
    mode = "Active"
  }

  tags = var.tags

  # The log group exists (with retention and KMS) before the first invocation could create it.
  depends_on = [aws_cloudwatch_log_group.function, aws_iam_role_policy.function]
}

# For invokes by hand (`aws lambda invoke --qualifier live`): the version the state
# machines of the last apply call. A run that started before that apply calls the version
# named in its own execution's definition.
resource "aws_lambda_alias" "live" {
  for_each = local.functions

  name             = "live"
  description      = "The version the state machines of the last apply invoke"
  function_name    = aws_lambda_function.function[each.key].function_name
  function_version = aws_lambda_function.function[each.key].version
}
