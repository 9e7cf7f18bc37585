#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(
        |input, deps| async move { restore_writes::run(input, &deps).await },
    )
    .await
}
