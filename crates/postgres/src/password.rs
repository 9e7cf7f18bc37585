//! Role passwords as SCRAM-SHA-256 verifiers, computed and checked client-side.
//!
//! Checking needs the stored salt and iteration count, which postgres-protocol keeps
//! private; [`scram_verifies`] is the server's own check (`scram_verify_plain_password`)
//! done here, so a password never travels to a server just to be compared.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use switchyard_telemetry::Secret;

/// The SCRAM-SHA-256 verifier of `password` (random salt), for `CREATE/ALTER ROLE …
/// PASSWORD '<verifier>'`. The server stores it as given, so the plain password never
/// appears in SQL text — a failing statement is logged whole by the server.
pub fn scram_verifier(password: &Secret) -> String {
    postgres_protocol::password::scram_sha_256(password.expose().as_bytes())
}

/// True when `stored` is `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` and
/// both keys derive from `password`. Any other form (md5, plain, malformed) is false: the
/// caller then sets a fresh SCRAM verifier, which is what green should hold anyway.
pub fn scram_verifies(stored: &str, password: &Secret) -> bool {
    check(stored, password).unwrap_or(false)
}

fn check(stored: &str, password: &Secret) -> Option<bool> {
    let parsed = parse(stored)?;
    let salted = salted_password(&prepare(password.expose()), &parsed.salt, parsed.iterations)?;
    let client_key = hmac(&salted, b"Client Key")?;
    let server_key = hmac(&salted, b"Server Key")?;
    Some(
        Sha256::digest(client_key).as_slice() == parsed.stored_key.as_slice()
            && server_key.as_slice() == parsed.server_key.as_slice(),
    )
}

struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

fn parse(stored: &str) -> Option<Verifier> {
    let rest = stored.strip_prefix("SCRAM-SHA-256$")?;
    let (iterations_salt, keys) = rest.split_once('$')?;
    let (iterations, salt) = iterations_salt.split_once(':')?;
    let (stored_key, server_key) = keys.split_once(':')?;
    let iterations: u32 = iterations.parse().ok()?;
    (iterations > 0).then_some(())?;
    Some(Verifier {
        iterations,
        salt: STANDARD.decode(salt).ok()?,
        stored_key: STANDARD.decode(stored_key).ok()?,
        server_key: STANDARD.decode(server_key).ok()?,
    })
}

/// SASLprep, as the server applies it before hashing; a password it rejects is hashed as
/// its raw bytes, again as the server does.
fn prepare(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's `Hi()`.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> Option<[u8; 32]> {
    // Keyed once, cloned per round: the key schedule is half the work otherwise.
    let keyed = Hmac::<Sha256>::new_from_slice(password).ok()?;
    let round = |message: &[&[u8]]| -> [u8; 32] {
        let mut mac = keyed.clone();
        for part in message {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    };
    let mut previous = round(&[salt, &1u32.to_be_bytes()]);
    let mut result = previous;
    for _ in 1..iterations {
        previous = round(&[&previous]);
        for (r, p) in result.iter_mut().zip(previous) {
            *r ^= p;
        }
    }
    Some(result)
}

/// `None` never happens in practice: HMAC takes keys of any length.
fn hmac(key: &[u8], message: &[u8]) -> Option<[u8; 32]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(message);
    Some(mac.finalize().into_bytes().into())
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

    #[test]
    fn accepts_its_own_password_and_refuses_others() {
        let password = Secret::new("p@ss!'w:/rd");
        let stored = scram_verifier(&password);
        assert!(scram_verifies(&stored, &password));
        assert!(!scram_verifies(&stored, &Secret::new("p@ss!'w:/rD")));
        assert!(!scram_verifies(&stored, &Secret::new("")));
    }

    /// A verifier PostgreSQL 17 stored for `ALTER ROLE x PASSWORD 'secret'`
    /// (iterations and salt length are the server's, not postgres-protocol's).
    #[test]
    fn checks_a_verifier_the_server_made() {
        let stored = "SCRAM-SHA-256$4096:0+23xjhGDKOJmKsuslCnbQ==$\
            vEvP2ZijAYkAWFYVlRYrdCapnIHPYMgUOgFnpMQTbL4=:\
            c/NgI0rxoefnHAj+Joaoq9PC5y0FSg5qhQPo8Xyvn3Q=";
        assert!(scram_verifies(stored, &Secret::new("secret")));
        assert!(!scram_verifies(stored, &Secret::new("Secret")));
    }

    #[test]
    fn other_forms_never_verify() {
        let password = Secret::new("secret");
        for stored in [
            "",
            "secret",
            "md5a3556571e93b0d20722ba62be61e8c2d",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:not base64!$AAAA:AAAA",
            "SCRAM-SHA-256$4096:AAAA",
        ] {
            assert!(!scram_verifies(stored, &password), "{stored}");
        }
    }
}
