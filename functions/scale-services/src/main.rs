#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { scale_services::run(input, &deps).await },
        |input, deps| async move { scale_services::plan(input, &deps).await },
    )
    .await
}
