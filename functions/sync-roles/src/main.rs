#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { sync_roles::run(input, &deps).await },
        |input, deps| async move { sync_roles::plan(input, &deps).await },
    )
    .await
}
