#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(|input, deps| async move {
        finalize_replication::run(input, &deps).await
    })
    .await
}
