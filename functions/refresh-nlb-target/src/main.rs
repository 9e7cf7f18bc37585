#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(
        |input, deps| async move { refresh_nlb_target::run(input, &deps).await },
    )
    .await
}
