#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve_planned(
        |input, deps| async move { delete_old_cluster::run(input, &deps).await },
        |input, deps| async move { delete_old_cluster::plan(input, &deps).await },
    )
    .await
}
