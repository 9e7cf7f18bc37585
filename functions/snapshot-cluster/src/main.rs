#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(
        |input, deps| async move { snapshot_cluster::run(input, &deps).await },
    )
    .await
}
