#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { resume_pgbouncer::run(input, &deps).await },
        |input, deps| async move { resume_pgbouncer::plan(input, &deps).await },
    )
    .await
}
