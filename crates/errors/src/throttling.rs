//! Which AWS error codes mean "slow down": the one list every AWS error consults.

/// AWS error codes that mean the request was throttled, after the SDKs' standard list.
///
/// Left out on purpose: `TransactionInProgressException` (a conflict, not a rate) and
/// `LimitExceededException` (often a hard quota, which no retry gets past).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "ProvisionedThroughputExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
    "BandwidthLimitExceeded",
];

/// Whether an AWS error code (`ProvideErrorMetadata::code`) is throttling, i.e. maps to
/// `AwsThrottled` rather than `AwsError`. Codes are case-sensitive, as AWS returns them.
pub fn is_aws_throttling(code: &str) -> bool {
    THROTTLING_CODES.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_aws_codes() {
        let cases = [
            ("Throttling", true),
            ("ThrottlingException", true),
            ("ThrottledException", true),
            ("RequestLimitExceeded", true),
            ("TooManyRequestsException", true),
            ("RequestThrottled", true),
            ("RequestThrottledException", true),
            ("ProvisionedThroughputExceededException", true),
            ("SlowDown", true),
            ("PriorRequestNotComplete", true),
            ("EC2ThrottledException", true),
            ("BandwidthLimitExceeded", true),
            ("TransactionInProgressException", false),
            ("LimitExceededException", false),
            ("InvalidDBClusterStateFault", false),
            ("DBClusterNotFoundFault", false),
            ("AccessDeniedException", false),
            ("ParameterNotFound", false),
            ("throttling", false),
            ("Rate exceeded", false),
            ("", false),
        ];
        for (code, throttled) in cases {
            assert_eq!(is_aws_throttling(code), throttled, "{code}");
        }
    }
}
