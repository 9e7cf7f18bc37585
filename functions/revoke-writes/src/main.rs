#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(|input, deps| async move { revoke_writes::run(input, &deps).await })
        .await
}
