#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(|input, deps| async move { acquire_lock::run(input, &deps).await })
        .await
}
