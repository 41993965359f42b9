//! Runs named cases one after the other, keeps going past failures, and
//! fails at the end with every failure listed: one run tells which transfers
//! work and which do not.

use std::time::{Duration, Instant};

use anyhow::Result;

struct Outcome {
    case: String,
    took: Duration,
    result: Result<String, String>,
}

pub struct Matrix {
    name: String,
    outcomes: Vec<Outcome>,
    started: Instant,
}

impl Matrix {
    pub fn new(name: &str) -> Self {
        Matrix {
            name: name.to_string(),
            outcomes: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Runs `f` as case `case`; what it returns on success is a note for the
    /// summary (e.g. how many bytes moved).
    pub fn run(&mut self, case: &str, f: impl FnOnce() -> Result<String>) {
        let start = Instant::now();
        let result = f().map_err(|e| format!("{e:#}"));
        let took = start.elapsed();
        match &result {
            Ok(note) => eprintln!(
                "[{}] ok   {case} ({:.2} s) {note}",
                self.name,
                took.as_secs_f64()
            ),
            Err(e) => eprintln!(
                "[{}] FAIL {case} ({:.2} s): {e}",
                self.name,
                took.as_secs_f64()
            ),
        }
        self.outcomes.push(Outcome {
            case: case.to_string(),
            took,
            result,
        });
    }

    /// Records a failure that stops the matrix (e.g. a daemon that did not
    /// start) and finishes it.
    pub fn abort(&mut self, case: &str, error: anyhow::Error) -> ! {
        self.outcomes.push(Outcome {
            case: case.to_string(),
            took: Duration::ZERO,
            result: Err(format!("{error:#} (the cases after it did not run)")),
        });
        self.finish();
        unreachable!("finish panics on a failure")
    }

    /// Prints the summary; panics listing the failed cases, if any.
    pub fn finish(&self) {
        let failed: Vec<&Outcome> = self.outcomes.iter().filter(|o| o.result.is_err()).collect();
        eprintln!(
            "[{}] {} cases, {} passed, {} failed, {:.1} s",
            self.name,
            self.outcomes.len(),
            self.outcomes.len() - failed.len(),
            failed.len(),
            self.started.elapsed().as_secs_f64()
        );
        if failed.is_empty() {
            return;
        }
        let list: Vec<String> = failed
            .iter()
            .map(|o| {
                format!(
                    "  {} ({:.1} s): {}",
                    o.case,
                    o.took.as_secs_f64(),
                    o.result.as_ref().err().map_or("", String::as_str)
                )
            })
            .collect();
        panic!(
            "[{}] {} of {} cases failed:\n{}",
            self.name,
            failed.len(),
            self.outcomes.len(),
            list.join("\n")
        );
    }
}
