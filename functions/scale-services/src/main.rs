#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(
        |input, deps| async move { scale_services::run(input, &deps).await },
    )
    .await
}
