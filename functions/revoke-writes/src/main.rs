#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { revoke_writes::run(input, &deps).await },
        |input, deps| async move { revoke_writes::plan(input, &deps).await },
    )
    .await
}
