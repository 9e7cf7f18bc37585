#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(|input, deps| async move { check_drift::run(input, &deps).await })
        .await
}
