#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { release_lock::run(input, &deps).await },
        |input, deps| async move { release_lock::plan(input, &deps).await },
    )
    .await
}
