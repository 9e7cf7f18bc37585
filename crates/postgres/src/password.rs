//! Role passwords as SCRAM-SHA-256 verifiers, computed client-side.

use switchyard_telemetry::Secret;

/// The SCRAM-SHA-256 verifier of `password` (random salt), for `CREATE/ALTER ROLE …
/// PASSWORD '<verifier>'`. The server stores it as given, so the plain password never
/// appears in SQL text — a failing statement is logged whole by the server.
pub fn scram_verifier(password: &Secret) -> String {
    postgres_protocol::password::scram_sha_256(password.expose().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_has_the_scram_shape_and_hides_the_password() {
        let password = Secret::new("p@ss!'w:/rd");
        let verifier = scram_verifier(&password);
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
        assert!(!verifier.contains(password.expose()));
        assert_ne!(
            verifier,
            scram_verifier(&password),
            "salted: two verifiers differ"
        );
    }
}
