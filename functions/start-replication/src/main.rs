#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { start_replication::run(input, &deps).await },
        |input, deps| async move { start_replication::plan(input, &deps).await },
    )
    .await
}
