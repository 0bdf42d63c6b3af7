//! The one event type between the layers that do the work (inputs, engine, plan) and what shows
//! it (the CLI's terminal display; tests). Nothing below `cli` prints: it emits an [`Event`]
//! into an [`EventSink`], and whoever made the sink decides what to do with it.

use std::sync::Arc;

use crate::core::verdict::{Outcome, Stage};

/// Something worth telling a person while it happens. Times are seconds since the session's
/// QEMU started (`t_s`) or since the work started (`elapsed_s`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A boot reached a stage for the first time.
    Milestone {
        session: usize,
        boot: usize,
        stage: Stage,
        t_s: f64,
        text: String,
    },
    /// QEMU reported an event over QMP.
    Qmp { name: String, t_s: f64 },
    /// A case step started (`step` is its name: `boot`, `login`, `upgrade`, ...).
    StepStarted {
        index: usize,
        step: String,
        detail: String,
    },
    /// A long step is still running: what it is, for how long, the console's last line.
    StepProgress {
        step: String,
        elapsed_s: f64,
        last_line: String,
    },
    /// A case step ended (`status`: `ok`, `failed`, `skipped`).
    StepFinished {
        index: usize,
        step: String,
        status: String,
        duration_s: f64,
        detail: String,
    },
    /// A boot was judged.
    Decided { session: usize, outcome: Outcome },
    /// A download: bytes so far of `total` (when known).
    Download {
        name: String,
        bytes: u64,
        total: Option<u64>,
    },
    /// A long build (a guest image, a QEMU tree) entered a phase; `done` when it finished.
    Build {
        what: String,
        phase: String,
        elapsed_s: f64,
        done: bool,
    },
    /// An input of a matrix or bisection is being resolved.
    Preparing { what: String },
    /// ... and is ready (or failed: `detail` says).
    Prepared {
        what: String,
        seconds: f64,
        detail: String,
    },
    /// A matrix cell started, or was taken from an earlier run with the same inputs.
    CellStarted {
        id: String,
        label: String,
        resumed: bool,
    },
    /// A matrix cell ended. `status`: `done`, `error`, `interrupted`, `not-run`.
    CellFinished {
        id: String,
        label: String,
        status: String,
        outcome: Outcome,
        error: Option<String>,
        /// "k of N crashed" when the cell's runs disagreed.
        flaky: Option<(u32, u32)>,
        duration_s: f64,
        finished: usize,
        total: usize,
    },
    /// A bisection step starts: step `step` of about `of_about`, what it tests, what is left
    /// to search (one sentence), the time since the bisection started and an estimate of what
    /// remains (from the mean step so far).
    BisectStep {
        step: usize,
        of_about: usize,
        what: String,
        left: String,
        elapsed_s: f64,
        eta_s: Option<f64>,
    },
    /// A bisection step ended: `class` is `good`, `bad` or `skip` (undetermined, like
    /// `git bisect skip`); `detail` says why in a few words (a failed build, "2 of 3 runs").
    BisectStepDone {
        step: usize,
        what: String,
        class: String,
        outcome: Outcome,
        detail: String,
        duration_s: f64,
    },
}

/// Where events go: nowhere, or a function the caller gave (called on the emitting thread; it
/// should only hand the event on, e.g. into a channel). A sink may carry a scope (a case or
/// cell name) that tells concurrent emitters apart.
/// The function a sink hands events to: `(scope, event)`.
type Deliver = dyn Fn(Option<&str>, Event) + Send + Sync;

#[derive(Clone, Default)]
pub struct EventSink {
    to: Option<Arc<Deliver>>,
    scope: Option<Arc<str>>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink")
            .field("connected", &self.to.is_some())
            .field("scope", &self.scope)
            .finish()
    }
}

impl EventSink {
    /// A sink that drops everything.
    pub fn none() -> EventSink {
        EventSink::default()
    }

    /// A sink that calls `f(scope, event)` for each event.
    pub fn new(f: impl Fn(Option<&str>, Event) + Send + Sync + 'static) -> EventSink {
        EventSink {
            to: Some(Arc::new(f)),
            scope: None,
        }
    }

    /// The same destination, with events tagged `scope`.
    pub fn scoped(&self, scope: &str) -> EventSink {
        EventSink {
            to: self.to.clone(),
            scope: Some(scope.into()),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.to.is_some()
    }

    pub fn emit(&self, event: Event) {
        if let Some(f) = &self.to {
            f(self.scope.as_deref(), event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn sinks_deliver_with_their_scope_or_drop() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let sink = EventSink::new(move |scope, e| {
            g.lock().unwrap().push((scope.map(str::to_string), e));
        });
        let ev = Event::Qmp {
            name: "RESET".into(),
            t_s: 1.0,
        };
        sink.emit(ev.clone());
        sink.scoped("cell c1").emit(ev.clone());
        EventSink::none().emit(ev.clone());
        let got = got.lock().unwrap();
        assert_eq!(
            *got,
            vec![(None, ev.clone()), (Some("cell c1".to_string()), ev)]
        );
    }
}
