use std::future::Future;
use std::pin::Pin;

use lambda_runtime::{service_fn, Diagnostic, LambdaEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use switchyard_cell::CellDocument;
use switchyard_errors::{ErrorName, Failure};
use tracing::Instrument;

use crate::{Deps, Error};

/// An operation's input: it carries the cell document, validated before `run` sees it.
pub trait OperationInput: DeserializeOwned {
    fn cell(&self) -> &CellDocument;
}

/// The payload preamble of an operation that changes the cell, once: implements
/// [`OperationInput`] for its `Input` (field `cell`) and gives it `caller()`, the fence's
/// view of who acts (fields `run_id` and `force`). Every such operation declares those
/// fields itself, each with its own words on what `force` overrides there.
#[macro_export]
macro_rules! operation_input {
    ($input:ty) => {
        impl $crate::OperationInput for $input {
            fn cell(&self) -> &::switchyard_cell::CellDocument {
                &self.cell
            }
        }

        impl $input {
            fn caller(&self) -> $crate::Caller<'_> {
                $crate::Caller {
                    run_id: &self.run_id,
                    force: self.force,
                }
            }
        }
    };
}

/// The payload field that carries the end of the pause budget (RFC 3339;
/// `pause-pgbouncer`'s `pause_deadline`). The state machine passes it to every step
/// between the pause and the resume; each of those declares it in its input
/// ([`crate::PauseDeadline`]) and bounds its own waits by it.
pub const PAUSE_DEADLINE_FIELD: &str = "pause_deadline";

/// Parses a payload into an operation's input: a malformed payload is `InvalidInput`
/// naming the field path, and the cell document inside is validated.
///
/// A payload carrying [`PAUSE_DEADLINE_FIELD`] in the past fails `PauseBudgetExceeded`
/// before the operation does anything: once PgBouncer has been paused longer than the
/// cell's budget, no further forward step may start, and the state machine takes the
/// abort path (whose steps do not carry the field).
pub fn parse_input<I: OperationInput>(payload: serde_json::Value) -> Result<I, Error> {
    if let Some(deadline) = payload.get(PAUSE_DEADLINE_FIELD) {
        check_pause_deadline(deadline, time::OffsetDateTime::now_utc())?;
    }
    let input: I = serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        Error::stop(
            ErrorName::InvalidInput,
            format!("payload field {path}: {}", e.into_inner()),
        )
    })?;
    input.cell().validate()?;
    Ok(input)
}

fn check_pause_deadline(
    deadline: &serde_json::Value,
    now: time::OffsetDateTime,
) -> Result<(), Error> {
    let parsed = deadline
        .as_str()
        .and_then(|d| {
            time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc3339).ok()
        })
        .ok_or_else(|| {
            Error::stop(
                ErrorName::InvalidInput,
                format!("payload field {PAUSE_DEADLINE_FIELD}: {deadline} is not an RFC 3339 time"),
            )
        })?;
    if now > parsed {
        return Err(Error::stop(
            ErrorName::PauseBudgetExceeded,
            format!(
                "PgBouncer has been paused past the cell's pause budget (deadline {parsed}); no forward step starts after it — the abort path restores writes and resumes PgBouncer"
            ),
        ));
    }
    Ok(())
}

/// The whole of a read-only operation's `main`: tracing, deps built once, then the Lambda
/// loop. The payload is taken as raw JSON and parsed here, so even a malformed one fails
/// with a catalogued name (`InvalidInput`), never the runtime's Rust type name. A
/// `dry_run` payload runs as usual: the operation changes nothing.
pub async fn serve<I, O, F, Fut>(run: F) -> Result<(), lambda_runtime::Error>
where
    I: OperationInput,
    O: Serialize,
    F: Fn(I, Deps) -> Fut,
    Fut: Future<Output = Result<O, Error>> + Send + 'static,
{
    serve_inner(move |input: I, deps: Deps, _dry_run: bool| -> Boxed {
        let run = run(input, deps);
        Box::pin(async move { to_json(run.await?) })
    })
    .await
}

/// The whole of a changing operation's `main`: as [`serve`], and a payload with
/// `"dry_run": true` calls `plan` instead of `run` and returns its [`Plan`](crate::Plan).
pub async fn serve_planned<I, O, F, Fut, P, PFut>(
    run: F,
    plan: P,
) -> Result<(), lambda_runtime::Error>
where
    I: OperationInput,
    O: Serialize,
    F: Fn(I, Deps) -> Fut,
    Fut: Future<Output = Result<O, Error>> + Send + 'static,
    P: Fn(I, Deps) -> PFut,
    PFut: Future<Output = Result<crate::Plan, Error>> + Send + 'static,
{
    serve_inner(move |input: I, deps: Deps, dry_run: bool| -> Boxed {
        if dry_run {
            let plan = plan(input, deps);
            Box::pin(async move { to_json(plan.await?) })
        } else {
            let run = run(input, deps);
            Box::pin(async move { to_json(run.await?) })
        }
    })
    .await
}

// Boxed as a trait object: an operation's future nests the SDK's and the driver's, and
// inline it overflows the compiler's layout query depth.
type Boxed = Pin<Box<dyn Future<Output = Result<serde_json::Value, Error>> + Send>>;

fn to_json<O: Serialize>(output: O) -> Result<serde_json::Value, Error> {
    serde_json::to_value(output).map_err(|e| {
        Error::stop(
            ErrorName::InvalidInput,
            format!("the output does not serialize: {e}"),
        )
    })
}

async fn serve_inner<I, H>(handle: H) -> Result<(), lambda_runtime::Error>
where
    I: OperationInput,
    H: Fn(I, Deps, bool) -> Boxed,
{
    switchyard_telemetry::init_tracing();
    let deps = match Deps::from_env().await {
        Ok(deps) => deps,
        Err(e) => {
            tracing::error!(error = %e, "cannot start: deployment configuration");
            return Err(Box::new(Failure::new(
                ErrorName::ConfigurationError,
                e.to_string(),
            )));
        }
    };
    let handle = &handle;
    let deps = &deps;
    let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
    let function = &function;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let mut payload = event.payload;
            let span = invocation_span(function, &payload);
            async move {
                let dry_run = crate::take_dry_run(&mut payload).map_err(Diagnostic::from)?;
                let input = parse_input::<I>(payload).map_err(Diagnostic::from)?;
                // Each invocation reads its logins afresh, once each.
                handle(input, deps.for_invocation(), dry_run)
                    .await
                    .map_err(Diagnostic::from)
            }
            .instrument(span)
            .await
        },
    ))
    .await
}

/// The root span of one invocation: every line it logs carries the function, the cell and
/// the run (`spans[0]` in the JSON logs), so one run can be followed across every
/// function's log group (docs/runbook.md gives the Logs Insights query). Read from the
/// raw payload, before it is parsed: a payload that fails to parse is found the same way.
pub fn invocation_span(function: &str, payload: &serde_json::Value) -> tracing::Span {
    let text =
        |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    tracing::info_span!(
        "invocation",
        function = %function,
        cell_id = %text(payload.get("cell").and_then(|c| c.get("cell_id"))),
        run_id = %text(payload.get("run_id")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_errors::Catalogued;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Probe {
        cell: CellDocument,
        #[allow(dead_code)]
        mode: String,
        #[allow(dead_code)]
        #[serde(default)]
        pause_deadline: Option<crate::PauseDeadline>,
    }

    impl OperationInput for Probe {
        fn cell(&self) -> &CellDocument {
            &self.cell
        }
    }

    fn example() -> serde_json::Value {
        serde_json::from_str(switchyard_cell::EXAMPLE).expect("example")
    }

    #[test]
    fn every_line_of_an_invocation_names_the_function_cell_and_run() {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("buffer").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(move || writer.clone())
            .finish();
        let payload = serde_json::json!({ "cell": example(), "run_id": "switchover-local-a-1" });
        tracing::subscriber::with_default(subscriber, || {
            let _invocation = invocation_span("switchyard-rename-clusters", &payload).entered();
            // An operation's own span inside it, as #[tracing::instrument] makes.
            let _inner = tracing::info_span!("run", mode = "forward").entered();
            tracing::info!("renaming");
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        let root = &line["spans"][0];
        assert_eq!(root["name"], "invocation");
        assert_eq!(root["function"], "switchyard-rename-clusters");
        assert_eq!(root["cell_id"], "local-a");
        assert_eq!(root["run_id"], "switchover-local-a-1");
    }

    #[test]
    fn a_good_payload_parses() {
        let payload = serde_json::json!({ "cell": example(), "mode": "quick" });
        assert!(parse_input::<Probe>(payload).is_ok());
    }

    #[test]
    fn a_wrong_field_type_is_invalid_input_naming_the_path() {
        let mut cell = example();
        cell["budgets"] = serde_json::json!({ "pause_seconds": "sixty" });
        let err = parse_input::<Probe>(serde_json::json!({ "cell": cell, "mode": "quick" }))
            .err()
            .expect("rejected");
        assert_eq!(err.error_name(), ErrorName::InvalidInput);
        assert!(
            err.to_string().contains("cell.budgets.pause_seconds"),
            "{err}"
        );
    }

    #[test]
    fn a_pause_deadline_passed_stops_before_anything_else() {
        let payload = |deadline: &str| serde_json::json!({ "cell": example(), "mode": "quick", "pause_deadline": deadline });
        let future = "2999-01-01T00:00:00Z";
        assert!(
            parse_input::<Probe>(payload(future)).is_ok(),
            "checked, then parsed with the input"
        );
        let err = parse_input::<Probe>(payload("2020-01-01T00:00:00Z"))
            .err()
            .expect("past");
        assert_eq!(err.error_name(), ErrorName::PauseBudgetExceeded, "{err}");
        let err = parse_input::<Probe>(payload("soon"))
            .err()
            .expect("garbage");
        assert_eq!(err.error_name(), ErrorName::InvalidInput, "{err}");
        let now = time::macros::datetime!(2026-11-22 10:00:00 UTC);
        let at = serde_json::json!("2026-11-22T10:00:00Z");
        assert!(
            check_pause_deadline(&at, now).is_ok(),
            "the deadline itself is still in budget"
        );
        assert!(check_pause_deadline(&at, now + time::Duration::milliseconds(1)).is_err());
    }

    #[test]
    fn an_invalid_cell_is_invalid_input() {
        let mut cell = example();
        cell["blue"]["cluster_identifier"] = serde_json::json!("Bad--Id");
        let err = parse_input::<Probe>(serde_json::json!({ "cell": cell, "mode": "quick" }))
            .err()
            .expect("rejected");
        assert_eq!(err.error_name(), ErrorName::InvalidInput);
        assert!(err.to_string().contains("blue.cluster_identifier"), "{err}");
        let diagnostic = Diagnostic::from(err);
        assert_eq!(diagnostic.error_type, "InvalidInput");
    }
}
