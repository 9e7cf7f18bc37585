#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { check_slot_lag::run(input, &deps).await },
        |input, deps| async move { check_slot_lag::plan(input, &deps).await },
    )
    .await
}
