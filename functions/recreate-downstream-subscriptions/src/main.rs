#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(|input, deps| async move {
        recreate_downstream_subscriptions::run(input, &deps).await
    })
    .await
}
