//! Finding the servers that service-backed tests need.
//!
//! A test that needs a server reads its URL from an environment variable
//! (`MINK_POSTGRES_URL`, …). When the variable is unset the test is skipped *loudly*
//! (a line on stderr), unless `MINK_REQUIRE_SERVICES=1`, in which case it fails.

/// The value of `var`, or `None` (after printing a skip notice) when it is unset and
/// services are not required.
///
/// # Panics
/// When the variable is unset and `MINK_REQUIRE_SERVICES=1`.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            if services_required() {
                panic!(
                    "{var} is not set, and MINK_REQUIRE_SERVICES=1 requires every service-backed test to run"
                );
            }
            // Written to the process's stderr directly, past the test harness's output
            // capture, so that a skip is seen even when the tests pass.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {var} is not set; a service-backed test did not run (set it, or MINK_REQUIRE_SERVICES=1 to fail instead)"
            );
            None
        }
    }
}

/// True when `MINK_REQUIRE_SERVICES=1`.
pub fn services_required() -> bool {
    std::env::var("MINK_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}
