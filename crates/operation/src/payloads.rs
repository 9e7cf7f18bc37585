//! The checked-in payload examples every operation keeps beside its code.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::OperationInput;

/// Checks an operation's example payloads: each parses, survives a serialize/parse round
/// trip unchanged, and the input's cell document validates. Each operation's unit tests
/// call it with `include_str!("../payloads/input.json")` and `…/output.json`.
///
/// # Panics
/// When an example does not parse, round-trip or validate: it is a test assertion.
pub fn assert_examples_round_trip<I, O>(input_json: &str, output_json: &str)
where
    I: OperationInput + Serialize + PartialEq + std::fmt::Debug,
    O: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let input: I = serde_json::from_str(input_json).expect("payloads/input.json parses as Input");
    let again: I = serde_json::from_value(serde_json::to_value(&input).expect("Input serializes"))
        .expect("Input parses back");
    assert_eq!(input, again, "Input round trip");
    input
        .cell()
        .validate()
        .expect("the example's cell document is valid");
    let output: O =
        serde_json::from_str(output_json).expect("payloads/output.json parses as Output");
    let again: O =
        serde_json::from_value(serde_json::to_value(&output).expect("Output serializes"))
            .expect("Output parses back");
    assert_eq!(output, again, "Output round trip");
}
