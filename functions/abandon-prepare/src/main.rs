#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { abandon_prepare::run(input, &deps).await },
        |input, deps| async move { abandon_prepare::plan(input, &deps).await },
    )
    .await
}
