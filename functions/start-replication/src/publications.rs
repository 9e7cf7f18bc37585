//! Publications on blue, created or corrected to carry exactly the planned tables:
//! [`decide`] reads what each needs, [`apply`] makes it.

use std::collections::HashSet;

use switchyard_cell::TableRef;
use switchyard_errors::ErrorName;
use switchyard_operation::Error;
use switchyard_postgres::quote::{self, ident, qualified};
use tokio_postgres::Client;

use crate::guard::own_ddl;
use crate::tables::{shown, Publication};

/// Root publishing: a partitioned table's rows travel as the root's, so green may
/// partition differently and each row is sent once.
const OPTIONS: &str =
    "publish = 'insert, update, delete, truncate', publish_via_partition_root = true";

/// What a publication on blue needs to carry exactly its planned tables.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Keep,
    Create,
    /// Its tables or options differ (`difference` says how); no subscription reads it yet.
    Correct {
        difference: String,
    },
}

impl Change {
    /// The dry run's line for it, `None` for `Keep`.
    pub(crate) fn would(&self, publication: &Publication) -> Option<String> {
        let name = quote::name(&publication.name);
        let tables = if publication.tables.is_empty() {
            "no tables".to_owned()
        } else {
            let names: Vec<String> = publication.tables.iter().map(shown).collect();
            names.join(", ")
        };
        match self {
            Self::Keep => None,
            Self::Create => Some(format!(
                "on blue: create publication {name} for {tables} (publish insert, update, delete, truncate; via partition root)"
            )),
            Self::Correct { difference } => Some(format!(
                "on blue: correct publication {name} ({difference}) to publish exactly {tables}, every operation, via partition root"
            )),
        }
    }
}

/// What `publication` needs on blue; `PreconditionFailed` when it cannot be made right
/// without losing data. `subscribed`: green already has the subscription reading it.
pub(crate) async fn decide(
    blue: &Client,
    publication: &Publication,
    subscribed: bool,
    version_num: i32,
) -> Result<Change, Error> {
    let Some(current) = describe(blue, &publication.name, version_num).await? else {
        return Ok(Change::Create);
    };
    let name = quote::name(&publication.name);
    if current.all_tables {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("publication {name} on blue is FOR ALL TABLES, which would publish tables twice; drop it and rerun start-replication"),
        ));
    }
    let wanted: HashSet<&TableRef> = publication.tables.iter().collect();
    let have: HashSet<&TableRef> = current.tables.iter().collect();
    if current.exact_options && wanted == have {
        return Ok(Change::Keep);
    }
    // Green's table states were fixed when the subscription was created: changing what it
    // reads now would leave tables never copied or copied but no longer fed.
    if subscribed {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!(
                "publication {name} on blue does not carry the planned tables ({}), and green's subscription {name} already reads it; drop the subscription on green and the publication on blue, empty the tables on green, then rerun start-replication",
                difference(&wanted, &have)
            ),
        ));
    }
    if publication.tables.is_empty() {
        return Err(Error::stop(
            ErrorName::PreconditionFailed,
            format!("publication {name} on blue publishes tables but should be empty now; drop it and rerun start-replication"),
        ));
    }
    Ok(Change::Correct {
        difference: difference(&wanted, &have),
    })
}

/// Makes the `change` [`decide`] found for `publication`.
pub(crate) async fn apply(
    blue: &mut Client,
    publication: &Publication,
    change: &Change,
) -> Result<(), Error> {
    let name = &publication.name;
    match change {
        Change::Keep => Ok(()),
        Change::Create => {
            let tables = if publication.tables.is_empty() {
                String::new()
            } else {
                format!(" FOR TABLE {}", table_list(&publication.tables))
            };
            let sql = format!(
                "CREATE PUBLICATION {}{tables} WITH ({OPTIONS})",
                ident(name)
            );
            own_ddl(
                blue,
                &format!("create publication {}", quote::name(name)),
                &sql,
            )
            .await?;
            tracing::info!(publication = %name, tables = publication.tables.len(), "publication created");
            Ok(())
        }
        Change::Correct { difference } => {
            // Safe without a subscription: a slot made earlier decodes with the publication
            // as it was at each change, but nothing has consumed it, and green's initial
            // copy of each table is taken later, from a snapshot that already includes
            // everything before it.
            let sql = format!(
                "ALTER PUBLICATION {n} SET TABLE {}; ALTER PUBLICATION {n} SET ({OPTIONS})",
                table_list(&publication.tables),
                n = ident(name),
            );
            own_ddl(
                blue,
                &format!("correct publication {}", quote::name(name)),
                &sql,
            )
            .await?;
            tracing::info!(publication = %name, change = %difference, "publication corrected");
            Ok(())
        }
    }
}

struct Current {
    all_tables: bool,
    /// Publishes every operation, via the partition root, without row filters or column lists.
    exact_options: bool,
    /// As subscribers see them: roots when published via the root, leaves otherwise.
    tables: Vec<TableRef>,
}

async fn describe(blue: &Client, name: &str, version_num: i32) -> Result<Option<Current>, Error> {
    let shown_name = quote::name(name);
    let Some(row) = blue
        .query_opt(
            "SELECT puballtables, pubviaroot AND pubinsert AND pubupdate AND pubdelete AND pubtruncate
               FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| Error::query(format!("reading publication {shown_name}"), e))?
    else {
        return Ok(None);
    };
    let mut exact_options: bool = row.get(1);
    // Row filters and column lists (PostgreSQL 15+) would replicate part of a table.
    if version_num >= 150_000 {
        let filtered: bool = blue
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_publication_rel r
                                  JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid
                                 WHERE p.pubname = $1
                                   AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL))",
                &[&name],
            )
            .await
            .map_err(|e| Error::query(format!("reading publication {shown_name}'s filters"), e))?
            .get(0);
        exact_options &= !filtered;
    }
    let tables = blue
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables
              WHERE pubname = $1 ORDER BY 1, 2",
            &[&name],
        )
        .await
        .map_err(|e| Error::query(format!("reading publication {shown_name}'s tables"), e))?
        .iter()
        .map(|r| TableRef {
            schema: r.get(0),
            table: r.get(1),
        })
        .collect();
    Ok(Some(Current {
        all_tables: row.get(0),
        exact_options,
        tables,
    }))
}

fn table_list(tables: &[TableRef]) -> String {
    tables
        .iter()
        .map(|t| qualified(&t.schema, &t.table))
        .collect::<Vec<_>>()
        .join(", ")
}

fn difference(wanted: &HashSet<&TableRef>, have: &HashSet<&TableRef>) -> String {
    let list = |set: Vec<&&TableRef>| {
        let mut names: Vec<String> = set.iter().map(|t| shown(t)).collect();
        names.sort();
        names.join(", ")
    };
    let missing = list(wanted.difference(have).collect());
    let extra = list(have.difference(wanted).collect());
    match (missing.is_empty(), extra.is_empty()) {
        (true, true) => "options differ".to_owned(),
        (false, true) => format!("missing {missing}"),
        (true, false) => format!("extra {extra}"),
        (false, false) => format!("missing {missing}; extra {extra}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dry_run_names_the_publication_its_tables_and_the_difference() {
        let publication = Publication {
            name: "switchyard_rest".into(),
            tables: vec![
                TableRef {
                    schema: "billing".into(),
                    table: "invoice lines".into(),
                },
                TableRef {
                    schema: "public".into(),
                    table: "accounts".into(),
                },
            ],
        };
        assert_eq!(Change::Keep.would(&publication), None);
        assert_eq!(
            Change::Create.would(&publication).as_deref(),
            Some("on blue: create publication switchyard_rest for billing.\"invoice lines\", public.accounts (publish insert, update, delete, truncate; via partition root)")
        );
        let have = [publication.tables[1].clone()];
        let correct = Change::Correct {
            difference: difference(&publication.tables.iter().collect(), &have.iter().collect()),
        };
        assert_eq!(
            correct.would(&publication).as_deref(),
            Some("on blue: correct publication switchyard_rest (missing billing.\"invoice lines\") to publish exactly billing.\"invoice lines\", public.accounts, every operation, via partition root")
        );
    }
}
