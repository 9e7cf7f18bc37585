//! ECS: the running tasks of a service and their addresses (PgBouncer discovery).

use aws_sdk_ecs::types::DesiredStatus;

use crate::AwsError;

/// DescribeTasks takes at most this many tasks per call.
const DESCRIBE_BATCH: usize = 100;

/// A running task of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceTask {
    pub arn: String,
    /// `None` when the task reports no private IPv4 address (not awsvpc networking).
    pub private_ip: Option<String>,
}

/// Every task of `cluster/service` whose desired status is RUNNING, with its address.
pub async fn running_tasks(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
) -> Result<Vec<ServiceTask>, AwsError> {
    let context = format!("listing the tasks of ECS service {cluster}/{service}");
    let mut arns = Vec::new();
    let mut pages = ecs
        .list_tasks()
        .cluster(cluster)
        .service_name(service)
        .desired_status(DesiredStatus::Running)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::from_sdk(context.as_str(), &e))?;
        arns.extend(page.task_arns().iter().cloned());
    }
    let mut tasks = Vec::new();
    for batch in arns.chunks(DESCRIBE_BATCH) {
        let out = ecs
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(batch.to_vec()))
            .send()
            .await
            .map_err(|e| {
                AwsError::from_sdk(
                    format!("describing the tasks of ECS service {cluster}/{service}"),
                    &e,
                )
            })?;
        tasks.extend(out.tasks().iter().map(|task| ServiceTask {
            arn: task.task_arn().unwrap_or("unknown task").to_owned(),
            private_ip: private_address(task),
        }));
    }
    Ok(tasks)
}

/// A task's private IPv4 address: from its ENI attachment (awsvpc), else its containers'.
fn private_address(task: &aws_sdk_ecs::types::Task) -> Option<String> {
    let from_attachment = task
        .attachments()
        .iter()
        .flat_map(|a| a.details())
        .find(|d| d.name() == Some("privateIPv4Address"))
        .and_then(|d| d.value());
    let from_container = || {
        task.containers()
            .iter()
            .flat_map(|c| c.network_interfaces())
            .find_map(|n| n.private_ipv4_address())
    };
    from_attachment.or_else(from_container).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_addresses_come_from_the_eni_first() {
        use aws_sdk_ecs::types::{Attachment, Container, KeyValuePair, NetworkInterface, Task};
        let eni = Attachment::builder()
            .details(
                KeyValuePair::builder()
                    .name("subnetId")
                    .value("subnet-1")
                    .build(),
            )
            .details(
                KeyValuePair::builder()
                    .name("privateIPv4Address")
                    .value("10.0.0.5")
                    .build(),
            )
            .build();
        let container = Container::builder()
            .network_interfaces(
                NetworkInterface::builder()
                    .private_ipv4_address("10.0.0.6")
                    .build(),
            )
            .build();
        let task = Task::builder()
            .attachments(eni)
            .containers(container.clone())
            .build();
        assert_eq!(private_address(&task).as_deref(), Some("10.0.0.5"));
        let task = Task::builder().containers(container).build();
        assert_eq!(private_address(&task).as_deref(), Some("10.0.0.6"));
        assert_eq!(private_address(&Task::builder().build()), None);
    }
}
