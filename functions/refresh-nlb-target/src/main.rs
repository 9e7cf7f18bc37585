#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { refresh_nlb_target::run(input, &deps).await },
        |input, deps| async move { refresh_nlb_target::plan(input, &deps).await },
    )
    .await
}
