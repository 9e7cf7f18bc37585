#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { copy_schema::run(input, &deps).await },
        |input, deps| async move { copy_schema::plan(input, &deps).await },
    )
    .await
}
