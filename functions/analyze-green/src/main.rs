#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { analyze_green::run(input, &deps).await },
        |input, deps| async move { analyze_green::plan(input, &deps).await },
    )
    .await
}
