# Each cell's document, where `switchyard --cell-id <id>` reads it: one SSM parameter per
# cell of var.cells that carries its document. The document must name what the map names
# (the map scopes the IAM policies): a plan that would keep two descriptions that differ
# fails here instead.

locals {
  cell_documents = { for id, c in var.cells : id => jsondecode(c.document) if c.document != null }
}

resource "aws_ssm_parameter" "cell_document" {
  for_each = local.cell_documents
  #checkov:skip=CKV2_AWS_34:A cell document names clusters, parameters and services and holds no secret; a String lets whoever runs switchyard read it without the KMS key.

  name        = "/${var.name_prefix}/cells/${each.key}"
  description = "switchyard: the cell document of ${each.key}"
  # The document names parameters, clusters and services; it holds no secret.
  type  = "String"
  tier  = "Intelligent-Tiering"
  value = var.cells[each.key].document
  tags  = var.tags

  lifecycle {
    precondition {
      condition = alltrue([
        each.value.cell_id == each.key,
        each.value.blue.cluster_identifier == var.cells[each.key].blue_cluster_identifier,
        each.value.green.cluster_identifier == var.cells[each.key].green_cluster_identifier,
        each.value.credentials.orchestrator_parameter == var.cells[each.key].orchestrator_parameter,
        each.value.credentials.application_roles_path == var.cells[each.key].application_roles_path,
        each.value.pgbouncer.admin_credentials_parameter == var.cells[each.key].pgbouncer_admin_parameter,
        length(lookup(each.value, "downstream", [])) == length(var.cells[each.key].downstream),
        alltrue([for i, d in lookup(each.value, "downstream", []) : d.credentials_parameter == var.cells[each.key].downstream[i].credentials_parameter && d.publisher_credentials_parameter == var.cells[each.key].downstream[i].publisher_credentials_parameter]),
      ])
      error_message = "the cell document of ${each.key} names other clusters or parameters than var.cells does: fix one of them (the policies are scoped to var.cells)."
    }
  }
}
