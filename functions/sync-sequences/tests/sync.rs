//! sync-sequences against a local cell whose green has blue's schema but none of its
//! sequence values.

use std::time::{Duration, Instant};

use switchyard_errors::{Catalogued, ErrorName};
use switchyard_local_cell::{LocalCell, TEST_RUN};
use sync_sequences::{plan, run, Input, Output, SequenceSync};

const GAP: i64 = 1000;

/// The sequences the fixture's tables draw their ids from, as `(schema, name)`.
const WATCHED: [(&str, &str); 4] = [
    ("public", "payments_id_seq"),
    ("public", "accounts_id_seq"),
    ("billing", "invoice_number_seq"),
    ("billing", "invoice lines_id_seq"),
];

/// A cell with green's schema copied, blue's ledger having written some payments, and
/// schema `switchyard` on blue only (its sequence must be ignored, not reported missing).
async fn written_cell() -> LocalCell {
    let cell = LocalCell::start_quiet(300).await.expect("cell");
    cell.lock(TEST_RUN).await.expect("lock");
    cell.copy_schema_directly().await.expect("schema on green");
    cell.blue
        .superuser_client("app")
        .await
        .expect("blue")
        .batch_execute("CREATE SCHEMA switchyard; CREATE TABLE switchyard.journal (id bigserial PRIMARY KEY); INSERT INTO switchyard.journal DEFAULT VALUES")
        .await
        .expect("switchyard schema");
    let ledger = cell
        .start_ledger(1, Duration::from_millis(5))
        .expect("ledger");
    let started = Instant::now();
    while ledger.acknowledged() < 20 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = ledger.stop().await;
    assert!(tally.keys().len() >= 20, "the ledger wrote on blue");
    cell
}

fn input(cell: &LocalCell) -> Input {
    Input {
        cell: cell.document.clone(),
        run_id: TEST_RUN.to_owned(),
        force: false,
        pause_deadline: None,
        gap: None,
    }
}

fn find<'a>(output: &'a Output, schema: &str, name: &str) -> &'a SequenceSync {
    assert_eq!(output.databases.len(), 1);
    let wanted = switchyard_postgres::quote::qualified_name(schema, name);
    output.databases[0]
        .sequences
        .iter()
        .find(|s| s.sequence == wanted)
        .unwrap_or_else(|| panic!("{wanted} in {output:?}"))
}

async fn last_value(client: &tokio_postgres::Client, schema: &str, name: &str) -> Option<i64> {
    client
        .query_one(
            "SELECT last_value FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2",
            &[&schema, &name],
        )
        .await
        .expect("pg_sequences")
        .get(0)
}

async fn max_id(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT max(id) FROM {table}"), &[])
        .await
        .expect("max id")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raises_green_past_blue_once_and_never_backwards() {
    let cell = written_cell().await;
    let deps = cell.deps().expect("deps");
    let blue = cell.blue.superuser_client("app").await.expect("blue");
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .batch_execute("CREATE SEQUENCE public.green_only_seq")
        .await
        .expect("green-only sequence");

    let green_values = || async {
        let mut values = Vec::new();
        for (schema, name) in WATCHED {
            values.push(last_value(&green, schema, name).await);
        }
        values
    };
    let untouched = green_values().await;
    assert!(untouched.iter().all(Option::is_none), "{untouched:?}");
    let dry = plan(input(&cell), &deps).await.expect("plan");
    assert_eq!(green_values().await, untouched, "the plan set nothing");
    assert!(
        !dry.would
            .iter()
            .any(|l| l.contains("switchyard.") || l.contains("green_only_seq")),
        "{dry:?}"
    );

    let first = run(input(&cell), &deps).await.expect("first run");
    for (schema, name) in WATCHED {
        let reported = find(&first, schema, name);
        let quoted = switchyard_postgres::quote::qualified_name(schema, name);
        let head = format!("setval {quoted} in database app on green: unused, next ");
        let tail = format!(
            " → {} (blue {}, gap 1000)",
            reported.green_after.expect("set"),
            reported.blue.expect("used"),
        );
        assert!(
            dry.would
                .iter()
                .any(|l| l.starts_with(&head) && l.ends_with(&tail)),
            "{head}…{tail} not in {dry:?}"
        );
    }
    assert_eq!(
        dry.would.len(),
        first.databases[0]
            .sequences
            .iter()
            .filter(|s| s.changed)
            .count(),
        "one line per sequence run changed: {dry:?}"
    );
    let dry = plan(input(&cell), &deps).await.expect("plan after");
    assert!(dry.is_empty(), "nothing left to do: {dry:?}");

    assert_eq!(first.gap, 1000);
    assert_eq!(
        first.databases[0].green_only.first,
        vec!["public.green_only_seq".to_owned()]
    );
    assert_eq!(
        first.databases[0].changed,
        first.databases[0]
            .sequences
            .iter()
            .filter(|s| s.changed)
            .count()
    );
    assert!(
        !first.databases[0]
            .sequences
            .iter()
            .any(|s| s.sequence.starts_with("switchyard.")),
        "switchyard's own sequences are left out: {first:?}"
    );
    for (schema, name) in WATCHED {
        let blue_value = last_value(&blue, schema, name).await.expect("blue used it");
        let green_value = last_value(&green, schema, name).await.expect("green set");
        assert!(
            green_value >= blue_value + GAP,
            "{schema}.{name}: green {green_value} < blue {blue_value} + {GAP}"
        );
        let reported = find(&first, schema, name);
        assert_eq!(reported.blue, Some(blue_value));
        assert_eq!(reported.green_before, None, "green had not used {name}");
        assert_eq!(reported.green_after, Some(green_value));
        assert!(reported.changed);
    }
    assert_eq!(
        last_value(&green, "public", "green_only_seq").await,
        None,
        "green-only sequence untouched"
    );

    // Inserts on green with default ids (payments' identity is GENERATED ALWAYS) land
    // past everything blue handed out.
    let account: i64 = green
        .query_one(
            "INSERT INTO public.accounts (email) VALUES ('green@example.com') RETURNING id",
            &[],
        )
        .await
        .expect("account on green")
        .get(0);
    assert!(account > max_id(&blue, "public.accounts").await);
    let payment: i64 = green
        .query_one(
            "INSERT INTO public.payments (account_id, amount) VALUES ($1, 1) RETURNING id",
            &[&account],
        )
        .await
        .expect("payment on green")
        .get(0);
    assert!(payment > max_id(&blue, "public.payments").await);
    let (invoice, number): (i64, i64) = {
        let row = green
            .query_one(
                "INSERT INTO billing.invoices (account_id) VALUES ($1) RETURNING id, number",
                &[&account],
            )
            .await
            .expect("invoice on green");
        (row.get(0), row.get(1))
    };
    let blue_number: i64 = blue
        .query_one("SELECT max(number) FROM billing.invoices", &[])
        .await
        .expect("blue numbers")
        .get(0);
    assert!(number > blue_number);
    let line: i64 = green
        .query_one(
            "INSERT INTO billing.\"invoice lines\" (invoice_id, description, unit_price) VALUES ($1, 'green', 1) RETURNING id",
            &[&invoice],
        )
        .await
        .expect("invoice line on green")
        .get(0);
    assert!(line > max_id(&blue, "billing.\"invoice lines\"").await);

    // Again: nothing to do, and the values the inserts moved stay where they are.
    let before_second: Vec<Option<i64>> = {
        let mut values = Vec::new();
        for (schema, name) in WATCHED {
            values.push(last_value(&green, schema, name).await);
        }
        values
    };
    let second = run(input(&cell), &deps).await.expect("second run");
    for ((schema, name), before) in WATCHED.into_iter().zip(before_second) {
        let reported = find(&second, schema, name);
        assert!(!reported.changed, "{reported:?}");
        assert_eq!(reported.green_before, before);
        assert_eq!(reported.green_after, before);
        assert_eq!(last_value(&green, schema, name).await, before);
    }
    assert!(second.databases[0].sequences.iter().all(|s| !s.changed));

    // Far ahead on green stays far ahead.
    green
        .batch_execute("SELECT setval('public.accounts_id_seq', 1000000000)")
        .await
        .expect("advance");
    let third = run(input(&cell), &deps).await.expect("third run");
    let accounts = find(&third, "public", "accounts_id_seq");
    assert!(!accounts.changed);
    assert_eq!(accounts.green_after, Some(1_000_000_000));
    assert_eq!(
        last_value(&green, "public", "accounts_id_seq").await,
        Some(1_000_000_000)
    );

    // A larger gap from the input moves the others on again.
    let wider = run(
        Input {
            gap: Some(5000),
            ..input(&cell)
        },
        &deps,
    )
    .await
    .expect("wider gap");
    let lines = find(&wider, "billing", "invoice lines_id_seq");
    assert!(lines.changed);
    assert_eq!(lines.green_after, Some(lines.blue.expect("blue") + 5000));
    assert!(!find(&wider, "public", "accounts_id_seq").changed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_missing_on_green_is_a_schema_mismatch() {
    let cell = written_cell().await;
    let deps = cell.deps().expect("deps");
    let green = cell.green.superuser_client("app").await.expect("green");
    green
        .batch_execute(
            "ALTER TABLE billing.invoices ALTER COLUMN number DROP DEFAULT; DROP SEQUENCE billing.invoice_number_seq",
        )
        .await
        .expect("drop on green");

    let error = run(input(&cell), &deps)
        .await
        .expect_err("a missing sequence stops");
    assert_eq!(error.error_name(), ErrorName::SchemaMismatch);
    let message = error.to_failure().message().to_owned();
    assert!(message.contains("billing.invoice_number_seq"), "{message}");
    // Checked before any setval: green's other sequences are as copy-schema left them.
    let client = cell.green.superuser_client("app").await.expect("green");
    assert_eq!(
        last_value(&client, "billing", "invoice lines_id_seq").await,
        None
    );
}
