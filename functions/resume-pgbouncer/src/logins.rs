//! Green's application logins, opened at the switch (`switchyard_operation::green_fence`):
//! reached and read before the point of no return, opened after it, before any RESUME.

use switchyard_cell::CellDocument;
use switchyard_errors::{Catalogued, ErrorName};
use switchyard_operation::app_roles::{self, Role};
use switchyard_operation::{green_fence, Deps, Error};
use tokio_postgres::Client;

/// The application roles SSM describes, and a checked connection to green.
pub(crate) struct Green {
    roles: Vec<Role>,
    client: Client,
}

impl Green {
    /// Reads the roles and connects to green (wherever it is, checked to be green).
    pub(crate) async fn reach(cell: &CellDocument, deps: &Deps) -> Result<Self, Error> {
        let orchestrator = Box::pin(deps.orchestrator(cell)).await?.username;
        let roles = Box::pin(app_roles::read(
            &deps.aws.ssm,
            &cell.credentials.application_roles_path,
            &orchestrator,
        ))
        .await?;
        let database = cell.databases.first().ok_or_else(|| {
            Error::stop(
                ErrorName::InvalidInput,
                "the cell document lists no database",
            )
        })?;
        let client = Box::pin(green_fence::connect(cell, deps, database)).await?;
        Ok(Self { roles, client })
    }

    /// The fenced roles that cannot log in to green yet.
    pub(crate) async fn closed(&self) -> Result<Vec<String>, Error> {
        green_fence::closed(&self.client, &green_fence::fenced(&self.roles)).await
    }

    /// Opens them; returns which it opened.
    pub(crate) async fn open(&mut self) -> Result<Vec<String>, Error> {
        green_fence::open(&mut self.client, &self.roles).await
    }
}

/// A failure reaching or opening green's logins once the cell has switched: the forward
/// retry is the only way on (`ResumeIncomplete`), never the abort path.
pub(crate) fn after_switch(e: &Error) -> Error {
    Error::stop(
        ErrorName::ResumeIncomplete,
        format!(
            "switched to green, but its application logins are not open yet ({}: {e}); nothing was resumed — clients wait; retry resume-pgbouncer forward",
            e.error_name()
        ),
    )
}
