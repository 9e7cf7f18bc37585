#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(|input, deps| async move { release_lock::run(input, &deps).await })
        .await
}
