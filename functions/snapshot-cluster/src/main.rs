#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { snapshot_cluster::run(input, &deps).await },
        |input, deps| async move { snapshot_cluster::plan(input, &deps).await },
    )
    .await
}
