//! Following an execution as it happens (`switchyard follow`): history events in, one
//! line per thing an operator watches for out — each state entered and left with its
//! duration and attempts, every failed attempt with its error, each lag reading, the pause
//! window opening and closing, and the outcome.

use std::collections::HashMap;

use switchyard_state_machine::{EventType, HistoryEvent};

use crate::report::{lag_of_event, unix_ms, Outcome, PAUSE_STATE, RESUME_STATES};

/// Turns history events, fed in order as they arrive, into lines.
#[derive(Debug, Default)]
pub struct Follower {
    entered: HashMap<String, (i64, u32)>,
    paused_at: Option<i64>,
    last_pause_note: Option<i64>,
    /// The last state entered: an end state (Succeed/Fail) names the outcome.
    last_state: Option<String>,
    /// The last lag reading (bytes) and when: the wait lines repeat it.
    last_lag: Option<u64>,
    last_wait_note: Option<i64>,
    outcome: Option<Outcome>,
}

impl Follower {
    pub fn new() -> Self {
        Self::default()
    }

    /// The execution has ended (its last event was fed).
    pub fn finished(&self) -> bool {
        self.outcome.is_some()
    }

    /// How it ended, once it has: `follow`'s exit code and last line.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The execution ended without an end event this history shows (stopped from the
    /// console between two polls): the outcome from the states seen so far.
    pub fn ended_without_event(&mut self) -> Outcome {
        let outcome = self.end_outcome();
        self.outcome = Some(outcome);
        outcome
    }

    fn end_outcome(&self) -> Outcome {
        self.last_state
            .as_deref()
            .and_then(Outcome::of_end_state)
            .unwrap_or(Outcome::Interrupted)
    }

    /// The lines one event makes (often none).
    pub fn feed(&mut self, event: &HistoryEvent) -> Vec<String> {
        let at = unix_ms(&event.timestamp).unwrap_or(0);
        let clock = event
            .timestamp
            .get(11..23)
            .unwrap_or(&event.timestamp)
            .to_owned();
        let state = event.state.clone().unwrap_or_default();
        let mut lines = Vec::new();
        let mut say = |text: String| lines.push(format!("{clock}  {text}"));
        match event.kind {
            EventType::ExecutionStarted => say("execution started".to_owned()),
            EventType::StateEntered(_) => {
                self.last_state = Some(state.clone());
                self.entered.insert(state.clone(), (at, 0));
                say(format!("→ {state}"));
            }
            EventType::TaskScheduled => {
                if let Some((_, attempts)) = self.entered.get_mut(&state) {
                    *attempts += 1;
                    if *attempts > 1 {
                        say(format!("  {state}: attempt {attempts}"));
                    }
                }
                if state == PAUSE_STATE && self.paused_at.is_none() {
                    self.paused_at = Some(at);
                    say("  ⏸ pause window open: PgBouncer is pausing clients".to_owned());
                }
            }
            EventType::TaskFailed | EventType::TaskTimedOut => {
                let error = event.error.as_deref().unwrap_or("States.TaskFailed");
                let cause: String = event
                    .cause
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(300)
                    .collect();
                say(format!("  ✗ {state}: {error}: {cause}"));
            }
            EventType::TaskSucceeded if RESUME_STATES.contains(&state.as_str()) => {
                if let Some(paused) = self.paused_at.take() {
                    say(format!("  ▶ pause window closed after {} ms", at - paused));
                }
            }
            EventType::StateExited(_) => {
                if let Some((since, attempts)) = self.entered.remove(&state) {
                    let tries = if attempts > 1 {
                        format!(" ({attempts} attempts)")
                    } else {
                        String::new()
                    };
                    say(format!("✓ {state} {} ms{tries}", at - since));
                }
            }
            EventType::ExecutionSucceeded => {
                let outcome = self.end_outcome();
                self.outcome = Some(outcome);
                say(format!(
                    "outcome: {} (exit {}): {}",
                    outcome.as_str(),
                    outcome.exit_code(),
                    outcome.next_step()
                ));
            }
            EventType::ExecutionFailed | EventType::ExecutionTimedOut => {
                let outcome = self.end_outcome();
                self.outcome = Some(outcome);
                say(format!(
                    "outcome: {} (exit {}){}: {}",
                    outcome.as_str(),
                    outcome.exit_code(),
                    if event.kind == EventType::ExecutionTimedOut {
                        " (timed out)"
                    } else {
                        ""
                    },
                    event.error.as_deref().unwrap_or("?")
                ));
                lines.push(format!("              {}", outcome.next_step()));
                if let Some(cause) = &event.cause {
                    lines.push(format!("              {cause}"));
                }
                if let Some(paused) = self.paused_at {
                    lines.push(format!(
                        "              PgBouncer still paused since {} ms before the end: see docs/runbook.md (resume-pgbouncer)",
                        at - paused
                    ));
                }
            }
            _ => {}
        }
        if let Some(sample) = lag_of_event(event) {
            self.last_lag = Some(sample);
            lines.push(format!("{clock}    lag {sample} bytes ({state})"));
        }
        lines
    }

    /// What a person watching wants while nothing new happens: during the pause window,
    /// how long it has been open (at most every 5 s); otherwise the state still running
    /// and for how long (at most every 30 s: a prepare waits hours). Each with the last lag
    /// reading. `now_ms`: Unix ms.
    pub fn tick(&mut self, now_ms: i64) -> Option<String> {
        if self.finished() {
            return None;
        }
        let lag = self
            .last_lag
            .map(|bytes| format!("; last lag {bytes} bytes"))
            .unwrap_or_default();
        if let Some(paused) = self.paused_at {
            if self
                .last_pause_note
                .is_some_and(|last| now_ms - last < 5_000)
            {
                return None;
            }
            self.last_pause_note = Some(now_ms);
            return Some(format!("  … paused for {} ms so far{lag}", now_ms - paused));
        }
        let state = self.last_state.as_ref()?;
        let (since, attempts) = self.entered.get(state)?;
        if now_ms - since < 30_000
            || self
                .last_wait_note
                .is_some_and(|last| now_ms - last < 30_000)
        {
            return None;
        }
        self.last_wait_note = Some(now_ms);
        Some(format!(
            "  … in {state} for {} s (attempt {attempts}){lag}",
            (now_ms - since) / 1000
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use switchyard_state_machine::StateType;

    fn event(kind: EventType, state: &str, at: &str) -> HistoryEvent {
        let mut e = HistoryEvent::new(kind, Some(state).filter(|s| !s.is_empty()));
        e.timestamp = format!("2026-11-22T10:00:{at}Z");
        e
    }

    #[test]
    fn the_pause_window_retries_lag_and_outcome_are_told_as_they_come() {
        let mut f = Follower::new();
        let mut out = Vec::new();
        let mut failed = event(EventType::TaskFailed, "check-slot-lag", "01.500");
        failed.error = Some("LagNotZero".to_owned());
        failed.cause =
            Some("green has not yet applied everything: slot s 2048 bytes behind 0/1".to_owned());
        let mut lag_ok = event(EventType::TaskSucceeded, "check-slot-lag", "02.600");
        lag_ok.output = Some(json!({"Payload": {"databases": [{"slots": [{"bytes_behind": 0}]}]}}));
        for e in [
            event(
                EventType::StateEntered(StateType::Task),
                "pause-pgbouncer",
                "00.000",
            ),
            event(EventType::TaskScheduled, "pause-pgbouncer", "00.010"),
            event(
                EventType::StateExited(StateType::Task),
                "pause-pgbouncer",
                "00.200",
            ),
            event(
                EventType::StateEntered(StateType::Task),
                "check-slot-lag",
                "00.300",
            ),
            event(EventType::TaskScheduled, "check-slot-lag", "00.310"),
            failed,
            event(EventType::TaskScheduled, "check-slot-lag", "02.500"),
            lag_ok,
            event(
                EventType::StateExited(StateType::Task),
                "check-slot-lag",
                "02.700",
            ),
            event(
                EventType::StateEntered(StateType::Task),
                "resume-pgbouncer",
                "02.800",
            ),
            event(EventType::TaskScheduled, "resume-pgbouncer", "02.810"),
            event(EventType::TaskSucceeded, "resume-pgbouncer", "03.010"),
            event(
                EventType::StateExited(StateType::Task),
                "resume-pgbouncer",
                "03.020",
            ),
            event(EventType::ExecutionSucceeded, "", "03.100"),
        ] {
            out.extend(f.feed(&e));
        }
        let text = out.join("\n");
        for expected in [
            "10:00:00.000  → pause-pgbouncer",
            "⏸ pause window open",
            "✓ pause-pgbouncer 200 ms",
            "✗ check-slot-lag: LagNotZero: green has not yet applied everything",
            "lag 2048 bytes (check-slot-lag)",
            "check-slot-lag: attempt 2",
            "lag 0 bytes (check-slot-lag)",
            "✓ check-slot-lag 2400 ms (2 attempts)",
            "▶ pause window closed after 3000 ms",
            // Its last state was no end state of a definition: not "switched".
            "outcome: interrupted (exit 40)",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        assert!(f.finished());
        assert_eq!(f.tick(0), None, "no reminder once resumed");
    }

    #[test]
    fn a_long_wait_says_where_it_waits_and_the_last_lag() {
        let mut f = Follower::new();
        f.feed(&event(
            EventType::StateEntered(StateType::Task),
            "check-replication",
            "00.000",
        ));
        f.feed(&event(
            EventType::TaskScheduled,
            "check-replication",
            "00.000",
        ));
        let start = unix_ms("2026-11-22T10:00:00.000Z").expect("time");
        assert_eq!(f.tick(start + 10_000), None, "a short wait is no news");
        let mut failed = event(EventType::TaskFailed, "check-replication", "40.000");
        failed.error = Some("NotCaughtUp".to_owned());
        failed.cause = Some("green lags 5120 bytes behind blue".to_owned());
        f.feed(&failed);
        f.feed(&event(
            EventType::TaskScheduled,
            "check-replication",
            "45.000",
        ));
        assert_eq!(
            f.tick(start + 50_000).as_deref(),
            Some("  … in check-replication for 50 s (attempt 2); last lag 5120 bytes")
        );
        assert_eq!(f.tick(start + 60_000), None, "at most every 30 s");
        assert!(f.tick(start + 81_000).is_some());
    }

    #[test]
    fn a_run_that_ends_paused_says_so_and_reminds_while_paused() {
        let mut f = Follower::new();
        f.feed(&event(
            EventType::StateEntered(StateType::Task),
            "pause-pgbouncer",
            "00.000",
        ));
        f.feed(&event(
            EventType::TaskScheduled,
            "pause-pgbouncer",
            "00.000",
        ));
        let start = unix_ms("2026-11-22T10:00:00.000Z").expect("time");
        assert_eq!(
            f.tick(start + 1_000).as_deref(),
            Some("  … paused for 1000 ms so far")
        );
        assert_eq!(f.tick(start + 2_000), None, "at most every 5 s");
        assert!(f.tick(start + 6_500).is_some());
        f.feed(&event(
            EventType::StateEntered(StateType::Fail),
            "abort incomplete",
            "08.900",
        ));
        let mut failed = event(EventType::ExecutionFailed, "", "09.000");
        failed.error = Some("States.TaskFailed".to_owned());
        let text = f.feed(&failed).join("\n");
        assert!(
            text.contains("outcome: abort_incomplete (exit 21): States.TaskFailed"),
            "{text}"
        );
        assert!(text.contains("resume-pgbouncer abort first"), "{text}");
        assert!(text.contains("PgBouncer still paused"), "{text}");
        assert_eq!(f.outcome(), Some(Outcome::AbortIncomplete));
    }

    #[test]
    fn the_end_state_names_the_outcome_and_its_exit_code() {
        for (end, kind, outcome, code) in [
            (
                "switched",
                EventType::ExecutionSucceeded,
                Outcome::Switched,
                0,
            ),
            (
                "switched, cleanup incomplete",
                EventType::ExecutionFailed,
                Outcome::SwitchedCleanupIncomplete,
                10,
            ),
            ("aborted", EventType::ExecutionFailed, Outcome::Aborted, 20),
            (
                "not started",
                EventType::ExecutionFailed,
                Outcome::NotStarted,
                22,
            ),
            (
                "prepared",
                EventType::ExecutionSucceeded,
                Outcome::Prepared,
                0,
            ),
            (
                "prepare failed",
                EventType::ExecutionFailed,
                Outcome::PrepareFailed,
                30,
            ),
        ] {
            let mut f = Follower::new();
            let state = if code == 0 {
                StateType::Succeed
            } else {
                StateType::Fail
            };
            f.feed(&event(EventType::StateEntered(state), end, "00.000"));
            let text = f.feed(&event(kind, "", "00.100")).join("\n");
            assert_eq!(f.outcome(), Some(outcome), "{end}");
            assert_eq!(outcome.exit_code(), code, "{end}");
            assert!(
                text.contains(&format!("outcome: {} (exit {code})", outcome.as_str())),
                "{end}: {text}"
            );
        }
        // Stopped from the console in the middle of the window: interrupted, its own code.
        let mut f = Follower::new();
        f.feed(&event(
            EventType::StateEntered(StateType::Task),
            "rename-clusters forward",
            "00.000",
        ));
        assert_eq!(f.ended_without_event(), Outcome::Interrupted);
        assert_eq!(Outcome::Interrupted.exit_code(), 40);
    }
}
