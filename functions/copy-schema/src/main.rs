#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    switchyard_operation::serve(|input, deps| async move { copy_schema::run(input, &deps).await })
        .await
}
