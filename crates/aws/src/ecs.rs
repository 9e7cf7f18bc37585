//! ECS: the running tasks of a service and their addresses (PgBouncer discovery), and
//! every task of a service that has not stopped yet (draining a direct writer).

use aws_sdk_ecs::types::{DesiredStatus, Task};

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
    let arns = task_arns(ecs, cluster, service, DesiredStatus::Running).await?;
    let tasks = describe_tasks(ecs, cluster, service, &arns).await?;
    let group = service_group(service);
    Ok(tasks
        .iter()
        // The group check keeps a listing that ignores the service filter (moto's) from
        // returning another service's tasks.
        .filter(|task| task.group() == Some(group.as_str()))
        .map(|task| ServiceTask {
            arn: task.task_arn().unwrap_or("unknown task").to_owned(),
            private_ip: private_address(task),
        })
        .collect())
}

/// A task of a service that has not stopped: its process may still be running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveTask {
    pub arn: String,
    /// ECS's `lastStatus`: PROVISIONING, PENDING, ACTIVATING, RUNNING, DEACTIVATING,
    /// STOPPING or DEPROVISIONING.
    pub last_status: String,
    pub desired_status: String,
}

/// Every task of `cluster/service` whose last status is not STOPPED — including tasks
/// told to stop that are still draining (desired STOPPED, last RUNNING or STOPPING):
/// after SIGTERM their process may still be writing.
pub async fn live_tasks(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
) -> Result<Vec<LiveTask>, AwsError> {
    let mut arns = task_arns(ecs, cluster, service, DesiredStatus::Running).await?;
    // A draining task already has desired status STOPPED.
    for arn in task_arns(ecs, cluster, service, DesiredStatus::Stopped).await? {
        if !arns.contains(&arn) {
            arns.push(arn);
        }
    }
    let tasks = describe_tasks(ecs, cluster, service, &arns).await?;
    let group = service_group(service);
    Ok(tasks
        .iter()
        .filter(|task| is_live(task, &group))
        .map(|task| LiveTask {
            arn: task.task_arn().unwrap_or("unknown task").to_owned(),
            last_status: task.last_status().unwrap_or("UNKNOWN").to_owned(),
            desired_status: task.desired_status().unwrap_or("UNKNOWN").to_owned(),
        })
        .collect())
}

/// The task group ECS gives the tasks it starts for `service`.
pub fn service_group(service: &str) -> String {
    format!("service:{service}")
}

/// A task's last status once its containers have exited and it is gone.
const STOPPED: &str = "STOPPED";

/// Whether `task` belongs to the service whose task group is `group` and has not stopped.
/// ECS sets `service:<name>` on a service's tasks; checking it keeps a listing that
/// ignores the service filter (moto's) from counting other tasks.
fn is_live(task: &Task, group: &str) -> bool {
    task.group() == Some(group) && task.last_status() != Some(STOPPED)
}

async fn task_arns(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
    desired: DesiredStatus,
) -> Result<Vec<String>, AwsError> {
    let context = format!("listing the tasks of ECS service {cluster}/{service}");
    let mut arns = Vec::new();
    let mut pages = ecs
        .list_tasks()
        .cluster(cluster)
        .service_name(service)
        .desired_status(desired)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| AwsError::from_sdk(context.as_str(), &e))?;
        arns.extend(page.task_arns().iter().cloned());
    }
    Ok(arns)
}

async fn describe_tasks(
    ecs: &aws_sdk_ecs::Client,
    cluster: &str,
    service: &str,
    arns: &[String],
) -> Result<Vec<Task>, AwsError> {
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
        tasks.extend(out.tasks().iter().cloned());
    }
    Ok(tasks)
}

/// A task's private IPv4 address: from its ENI attachment (awsvpc), else its containers'.
fn private_address(task: &Task) -> Option<String> {
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
    fn a_draining_task_of_the_service_is_live() {
        let task = |group: &str, last: &str, desired: &str| {
            Task::builder()
                .group(group)
                .last_status(last)
                .desired_status(desired)
                .build()
        };
        let group = service_group("jobs");
        assert_eq!(group, "service:jobs");
        assert!(is_live(&task("service:jobs", "RUNNING", "RUNNING"), &group));
        assert!(is_live(&task("service:jobs", "PENDING", "RUNNING"), &group));
        assert!(is_live(&task("service:jobs", "RUNNING", "STOPPED"), &group));
        assert!(is_live(
            &task("service:jobs", "DEPROVISIONING", "STOPPED"),
            &group
        ));
        assert!(!is_live(
            &task("service:jobs", "STOPPED", "STOPPED"),
            &group
        ));
        assert!(!is_live(
            &task("service:jobs-2", "RUNNING", "RUNNING"),
            &group
        ));
        assert!(!is_live(&task("family:jobs", "RUNNING", "RUNNING"), &group));
        assert!(!is_live(
            &Task::builder().last_status("RUNNING").build(),
            &group
        ));
    }

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
