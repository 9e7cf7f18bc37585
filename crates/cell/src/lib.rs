//! The cell document: the execution input every operation is driven by, and its validation.
//!
//! The document appears in Step Functions execution history, so it holds SSM parameter
//! names and never the secrets themselves.

mod document;
mod error;
mod validation;

pub use document::{
    replication_name, reverse_replication_name, Budgets, CellDocument, ClusterRef, Credentials,
    DirectWriter, Discovery, Downstream, Environment, PgBouncer, Replication, SubscriptionSslMode,
    TableGroup, TableRef, Upgrade, BACK_JOURNAL, DEFAULT_REPLICATION_ROLE, EXAMPLE, REST_GROUP,
    REVERSE_GROUP,
};
pub use error::{CellError, Problem};
pub use validation::MAX_PAUSE_SECONDS;
