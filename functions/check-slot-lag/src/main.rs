#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(
        |input, deps| async move { check_slot_lag::run(input, &deps).await },
    )
    .await
}
