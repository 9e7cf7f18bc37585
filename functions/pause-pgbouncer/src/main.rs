#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(
        |input, deps| async move { pause_pgbouncer::run(input, &deps).await },
    )
    .await
}
