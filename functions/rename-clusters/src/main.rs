#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { rename_clusters::run(input, &deps).await },
        |input, deps| async move { rename_clusters::plan(input, &deps).await },
    )
    .await
}
