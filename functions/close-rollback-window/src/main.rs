#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { close_rollback_window::run(input, &deps).await },
        |input, deps| async move { close_rollback_window::plan(input, &deps).await },
    )
    .await
}
