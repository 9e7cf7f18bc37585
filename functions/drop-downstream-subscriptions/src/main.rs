#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { drop_downstream_subscriptions::run(input, &deps).await },
        |input, deps| async move { drop_downstream_subscriptions::plan(input, &deps).await },
    )
    .await
}
